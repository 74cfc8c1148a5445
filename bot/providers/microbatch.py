"""How many prompt tokens llama.cpp reads at a time here: many, unless a trial in a child process dies.

llama.cpp reads a prompt in micro-batches of up to 512 tokens, through matrix kernels that a
one-token micro-batch never runs. A build of llama-cpp-python made for one CPU (it is compiled with
`-march=native`) and reused on another (pip's wheel cache keys a built wheel by the source it was
built from, not by the processor) can die in those kernels with an illegal instruction, killing the
process mid-dialogue. That is the likeliest reason larger micro-batches once crashed on this
project's machines (a fresh build here reads 512-token micro-batches without fault). So the first
load of a model tries a batched read in a child process; if the child dies, prompts are read one
token at a time (slower, but alive) and the log says how to rebuild. The verdict is kept per
build, processor and model file, so the trial costs about 0.7 s once.

`python -m bot.providers.microbatch MODEL.gguf` is the trial itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: llama.cpp's own default: a micro-batch of up to 512 tokens.
BATCHED = 512
#: One token per micro-batch: slow, but never touches the batched kernels.
SINGLE = 1
#: Tokens the trial reads in one micro-batch: enough to take the batched kernels.
TRIAL_TOKENS = 64
REBUILD = (
    "rebuild llama-cpp-python for this processor: "
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"
)


def micro_batch(model: Path, command: Sequence[str] | None = None, cache: Path | None = None) -> int:
    """Return the micro-batch size to load `model` with: BATCHED if a trial in a child process
    survives, else SINGLE. `command` replaces the trial (tests give one that dies)."""
    key = _key(model)
    cache = cache or _cache_file()
    known = _read(cache)
    if key in known:
        return int(known[key])
    trial = list(command) if command else [sys.executable, "-m", __name__, str(model)]
    try:
        code = subprocess.run(trial, capture_output=True, timeout=120, check=False).returncode
        why = f"a trial read died of signal {-code}"
    except subprocess.TimeoutExpired:
        code, why = -1, "a trial read hung for 2 minutes"
    except OSError:
        return BATCHED  # no child could start: nothing was learnt, and the load itself will say more
    if code > 0:
        # The child raised (a file that is no model, say): that is not the batched kernels' fault,
        # and loading the model here will report it.
        return BATCHED
    size = BATCHED if code == 0 else SINGLE
    if size == SINGLE:
        log.warning(
            "llama.cpp cannot read prompts in batches on this machine (%s); reading them one token "
            "at a time, which is slower; %s",
            why,
            REBUILD,
        )
    _write(cache, {**known, key: size})
    return size


def _key(model: Path) -> str:
    """Name a build, a processor and a model file: the verdict holds while all three stay."""
    parts = [sys.version, str(model.resolve())]
    try:
        parts.append(str(model.stat().st_size))
    except OSError:
        pass
    try:
        import llama_cpp

        library = Path(llama_cpp.__file__).parent / "lib"
        parts += [llama_cpp.__version__] + [
            f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(library.glob("*"))
        ]
    except (ImportError, OSError):
        pass
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
        parts.append(flags)
    except (OSError, StopIteration):
        parts.append(os.uname().machine if hasattr(os, "uname") else sys.platform)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voices" / "micro-batch.json"


def _read(cache: Path) -> dict[str, int]:
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in known.items() if v in (BATCHED, SINGLE)} if isinstance(known, dict) else {}


def _write(cache: Path, known: dict[str, int]) -> None:
    # A cache that cannot be written only means the trial runs again next time.
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}")
        partial.write_text(json.dumps(known))
        os.replace(partial, cache)
    except OSError:
        pass


def _trial(model: str) -> None:
    """Read TRIAL_TOKENS tokens in one micro-batch; a build that cannot dies here, not in a dialogue."""
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=256, n_batch=TRIAL_TOKENS, n_ubatch=TRIAL_TOKENS, verbose=False)
    tokens = llm.tokenize(b"one two three four five six seven eight nine ten " * 8)[:TRIAL_TOKENS]
    llm.eval(tokens)


if __name__ == "__main__":
    _trial(sys.argv[1])
