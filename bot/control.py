"""Requests from outside a running dialogue: stop (after the turn, or at once, with a reason) and pause."""

from __future__ import annotations

from collections.abc import Callable

from bot.models import StopReason


class Control:
    """Requests from outside a running dialogue. A stop is sticky: once asked, no new call starts."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.stop_now = False
        self.pause_requested = False
        self.reason = StopReason.USER_STOP
        self.detail: str | None = None
        self._interrupt: Callable[[], None] | None = None

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
        if now:
            self.stop_now = True
            if self._interrupt is not None:
                self._interrupt()

    def pause(self) -> None:
        """Pause after the turn in flight; `run` on the same dialogue resumes it."""
        self.pause_requested = True
