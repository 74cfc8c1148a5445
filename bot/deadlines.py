"""When the earliest of some stored deadlines falls, known without asking the database every minute.

A clock that ticks each minute would otherwise read the database each minute for votes and shows
that are hours away. The earliest deadline is read once and kept; it is read again when it comes,
when this process sets a new one, and at least every `recheck` (another process may have set one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

RECHECK = timedelta(minutes=10)


class Deadlines:
    """The earliest of a table's deadlines, as last read."""

    def __init__(self, earliest: Callable[[], Awaitable[datetime | None]], recheck: timedelta = RECHECK):
        self._earliest = earliest
        self._recheck = recheck
        self._next: datetime | None = None
        self._read_at: datetime | None = None

    async def due(self, now: datetime) -> bool:
        """Return whether a deadline may have come by now (reading the table only when it might)."""
        stale = self._read_at is None or now - self._read_at >= self._recheck
        if stale or (self._next is not None and now >= self._next):
            self._next, self._read_at = await self._earliest(), now
        return self._next is not None and now >= self._next

    def added(self, moment: datetime) -> None:
        """A deadline was set here: it counts from now on."""
        self._next = moment if self._next is None else min(self._next, moment)

    def forget(self) -> None:
        """Deadlines were met or moved: read them again at the next tick."""
        self._read_at = None
