"""The event loop Voices runs on: uvloop where it is installed (the `fast` extra), asyncio's own
otherwise. Everything works the same on either; uvloop spends less CPU per streamed token."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new event loop, as asyncio.run does, and close the loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
