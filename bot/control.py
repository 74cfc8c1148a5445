"""Requests from outside a running dialogue: stop (after the turn, or at once, with a reason), pause,
and a person's words for their seat."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot.models import StopReason


class Control:
    """Requests from outside a running dialogue. A stop is sticky: once asked, no new call starts."""

    def __init__(self, outside: Callable[[Awaitable[bool]], Awaitable[bool]] | None = None) -> None:
        """`outside` wraps the long waits of a run (a person's words, the lease's heartbeat): a front
        end may declare them as waits for outside input (SimCord, for one, needs to know)."""
        self.stop_requested = False
        self.stop_now = False
        self.pause_requested = False
        self.reason = StopReason.USER_STOP
        self.detail: str | None = None
        self._interrupt: Callable[[], None] | None = None
        #: Set when another process took the dialogue over: this one must write nothing more.
        self.lost_lease: str | None = None
        self._said: str | None = None
        self._wake = asyncio.Event()
        self._outside = outside

    def stop(
        self, now: bool = False, reason: StopReason = StopReason.USER_STOP, detail: str | None = None
    ) -> None:
        """Stop after the turn in flight, or, with `now`, cancel its stream at once.

        `reason` is what gets recorded: a person's stop, or (say) the thread the dialogue was shown
        in being deleted.
        """
        if not self.stop_requested:
            self.reason, self.detail = reason, detail
        self.stop_requested = True
        self._wake.set()
        if now:
            self.stop_now = True
            if self._interrupt is not None:
                self._interrupt()

    def lose_lease(self, why: str) -> None:
        """Another process runs the dialogue now: cut the call in flight and write nothing more."""
        self.lost_lease = why
        self.stop(now=True, detail=why)

    def pause(self) -> None:
        """Pause after the turn in flight; `run` on the same dialogue resumes it."""
        self.pause_requested = True
        self._wake.set()

    def say(self, text: str) -> None:
        """Give the words of the person whose turn it is (now, or when their turn comes)."""
        self._said = text
        self._wake.set()

    def take_said(self) -> str | None:
        """Return the person's words, once."""
        said, self._said = self._said, None
        return said

    async def wait_for_said(self, timeout: float | None) -> str | None:
        """Wait for the person's words; None when the time is up or a stop or pause came first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._said is None and not (self.stop_requested or self.pause_requested):
            self._wake.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            woken = self._woken(left)
            if not await (self._outside(woken) if self._outside else woken):
                return None
        return self.take_said()

    async def idle(self, seconds: float, woken: asyncio.Event | None = None) -> None:
        """Wait out a background interval (the lease's heartbeat), or less if `woken` is set first
        (another process asked something of the dialogue). It goes through `outside` like a
        person's turn: a front end that must know which waits are not work (SimCord) sees it so."""

        await (self._outside(nap(seconds, woken)) if self._outside else nap(seconds, woken))

    async def _woken(self, timeout: float | None) -> bool:
        """Wait for a say, a stop or a pause; False when the time is up first."""
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True


async def nap(seconds: float, woken: asyncio.Event | None = None) -> bool:
    """Sleep `seconds`, or until `woken` is set (and then clear it for the next nap); True."""
    if woken is None:
        await asyncio.sleep(seconds)
        return True
    try:
        async with asyncio.timeout(seconds):
            await woken.wait()
    except TimeoutError:
        pass
    woken.clear()
    return True
