"""How a Voices process runs: on uvloop where it is installed (the `fast` extra), asyncio's own loop
otherwise, with the garbage collector set for many streams at once. Everything works the same on
either loop; uvloop spends less CPU per streamed token."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

#: New objects (less those freed) between collections of the youngest generation; CPython's is 700.
YOUNG_EVERY = 20_000


def run(main: Coroutine[Any, Any, T], *, prefer_uvloop: bool = True, tune: bool = True) -> T:
    """Run `main` to its end on a new event loop, as asyncio.run does, and close the loop. (The
    benchmarks measure asyncio's loop, or the collector as CPython sets it, by saying so.)"""
    if tune:
        tune_collector()
    uvloop = _uvloop() if prefer_uvloop else None
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _uvloop() -> ModuleType | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def tune_collector() -> None:
    """Look for reference cycles less often, and never again walk what the imports made.

    A streaming turn keeps a few hundred objects alive for about a second: its generators, its
    response, its buffers. Looked for every 700 new objects, most are still alive, so each
    collection walks them and moves them a generation up, until a full collection walks everything,
    the modules' objects too. At 300 dialogues that took about a sixth of the CPU, in pauses of up
    to 0.15 s; every 20,000 new objects, with the modules' objects frozen out of the walk, it takes a
    fortieth, in pauses of about 0.05 s (docs/benchmarks.md §2). Cycles are still freed, later."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_EVERY, middle, old)
