"""Shows on a schedule: a dialogue with fixed voices, opening, rounds and budget, put on daily or weekly
at a UTC time; when each is next due, and what happens to a slot missed while nobody was running.

A slot missed by less than `GRACE` runs once when the bot is back; an older one is skipped. Either
way a schedule runs at most once for all the slots it missed, and then waits for its next one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum

from bot.database import Row
from bot.errors import InputError
from bot.models import plain
from bot.store import Store

GRACE = timedelta(hours=1)
#: How many schedules one server may keep (each can spend its budget every day).
MAX_PER_GUILD = 25
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


class Cadence(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


@dataclass(frozen=True, slots=True)
class Schedule:
    """One show: who talks, about what, with which limits, where and when."""

    id: int
    guild_id: int
    channel_id: int
    created_by: int
    voices: tuple[str, ...]
    opening: str
    rounds: int
    budget_usd: Decimal
    cadence: Cadence
    at: time
    weekday: int | None
    next_run_at: datetime
    referee: str | None = None
    last_run_at: datetime | None = None
    last_dialogue_id: int | None = None
    disabled: str | None = None

    def describe(self) -> str:
        """Return when it runs, in words: "daily at 18:00 UTC", "Fridays at 09:30 UTC"."""
        clock = self.at.strftime("%H:%M")
        if self.cadence is Cadence.DAILY or self.weekday is None:
            return f"daily at {clock} UTC"
        return f"{WEEKDAYS[self.weekday].capitalize()}s at {clock} UTC"


def parse_clock(text: str) -> time:
    """Return the time of day in "HH:MM" (24-hour, UTC), or raise InputError saying the form."""
    match = _CLOCK.match(text)
    if match is None:
        raise InputError(f"'{text}' is not a time of day; write it as HH:MM in UTC, such as 18:00")
    return time(int(match.group(1)), int(match.group(2)))


def parse_weekday(cadence: Cadence, text: str | None) -> int | None:
    """Return the weekday (0 is Monday) a weekly show runs on; a daily one has none."""
    if cadence is Cadence.DAILY:
        if text is not None:
            raise InputError("a daily show runs every day; leave the weekday out, or make it weekly")
        return None
    if text is None:
        raise InputError("a weekly show needs its weekday, such as friday")
    wanted = text.strip().lower()
    found = [n for n, day in enumerate(WEEKDAYS) if day.startswith(wanted)] if len(wanted) >= 2 else []
    if len(found) != 1:
        raise InputError(f"'{text}' is not a weekday; write one of {', '.join(WEEKDAYS)}")
    return found[0]


def next_slot(cadence: Cadence, at: time, weekday: int | None, after: datetime) -> datetime:
    """Return the first moment strictly after `after` (UTC) at which the show is due."""
    moment = after.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    step = timedelta(days=1)
    while moment <= after or (cadence is Cadence.WEEKLY and moment.weekday() != weekday):
        moment += step
    return moment


class ScheduleStore:
    """Schedules in the dialogue database."""

    def __init__(self, store: Store):
        self._store = store

    async def add(
        self,
        guild_id: int,
        channel_id: int,
        created_by: int,
        voices: tuple[str, ...],
        opening: str,
        rounds: int,
        budget: Decimal,
        cadence: Cadence,
        at: time,
        weekday: int | None,
        referee: str | None,
        now: datetime,
    ) -> Schedule:
        """Store a new schedule, due at its first slot after now."""
        if len(await self.of_guild(guild_id)) >= MAX_PER_GUILD:
            raise InputError(f"this server has {MAX_PER_GUILD} schedules, the most it may; remove one first")
        first = next_slot(cadence, at, weekday, now)
        async with self._store.transaction() as conn:
            schedule_id = await conn.insert(
                "INSERT INTO schedules (guild_id, channel_id, created_by, voices, opening, rounds, "
                "budget_usd, cadence, at_minute, weekday, referee, next_run_at, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                (
                    guild_id,
                    channel_id,
                    created_by,
                    json.dumps(list(voices), ensure_ascii=False),
                    opening,
                    rounds,
                    plain(budget),
                    str(cadence),
                    at.hour * 60 + at.minute,
                    weekday,
                    referee,
                    first.isoformat(),
                    now.isoformat(),
                ),
            )
        return await self.get(guild_id, schedule_id)

    async def get(self, guild_id: int, schedule_id: int) -> Schedule:
        rows = await self._store.fetchall(
            "SELECT * FROM schedules WHERE id = $1 AND guild_id = $2", (schedule_id, guild_id)
        )
        if not rows:
            raise InputError(f"no schedule {schedule_id} in this server; `/voices schedule list` shows them")
        return _schedule(rows[0])

    async def of_guild(self, guild_id: int) -> list[Schedule]:
        query = "SELECT * FROM schedules WHERE guild_id = $1 ORDER BY id"
        rows = await self._store.fetchall(query, (guild_id,))
        return [_schedule(r) for r in rows]

    async def remove(self, guild_id: int, schedule_id: int) -> Schedule:
        schedule = await self.get(guild_id, schedule_id)
        async with self._store.transaction() as conn:
            await conn.execute("DELETE FROM schedules WHERE id = $1", (schedule_id,))
        return schedule

    async def earliest(self) -> datetime | None:
        """Return the first slot any enabled schedule waits for."""
        rows = await self._store.fetchall("SELECT min(next_run_at) FROM schedules WHERE disabled IS NULL")
        return datetime.fromisoformat(rows[0][0]) if rows[0][0] else None

    async def due(self, now: datetime) -> list[Schedule]:
        """Return the enabled schedules whose next slot has come."""
        rows = await self._store.fetchall(
            "SELECT * FROM schedules WHERE disabled IS NULL AND next_run_at <= $1 ORDER BY next_run_at",
            (now.isoformat(),),
        )
        return [_schedule(r) for r in rows]

    async def claim(self, schedule: Schedule, now: datetime) -> bool:
        """Move the schedule on to its first slot after now; False if another process (or an
        earlier tick) moved it first. Claimed before it runs, so a slot never runs twice."""
        following = next_slot(schedule.cadence, schedule.at, schedule.weekday, now)
        async with self._store.transaction() as conn:
            changed = await conn.update(
                "UPDATE schedules SET next_run_at = $1 WHERE id = $2 AND next_run_at = $3",
                (following.isoformat(), schedule.id, schedule.next_run_at.isoformat()),
            )
        return changed == 1

    async def ran(self, schedule_id: int, dialogue_id: int, now: datetime) -> None:
        """Record the dialogue a slot started."""
        async with self._store.transaction() as conn:
            await conn.execute(
                "UPDATE schedules SET last_run_at = $1, last_dialogue_id = $2 WHERE id = $3",
                (now.isoformat(), dialogue_id, schedule_id),
            )

    async def disable(self, schedule_id: int, reason: str) -> None:
        async with self._store.transaction() as conn:
            await conn.execute("UPDATE schedules SET disabled = $1 WHERE id = $2", (reason, schedule_id))


def _schedule(row: Row) -> Schedule:
    minute = row["at_minute"]
    last = row["last_run_at"]
    return Schedule(
        id=row["id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        created_by=row["created_by"],
        voices=tuple(json.loads(row["voices"])),
        opening=row["opening"],
        rounds=row["rounds"],
        budget_usd=Decimal(row["budget_usd"]),
        cadence=Cadence(row["cadence"]),
        at=time(minute // 60, minute % 60),
        weekday=row["weekday"],
        next_run_at=datetime.fromisoformat(row["next_run_at"]),
        referee=row["referee"],
        last_run_at=datetime.fromisoformat(last) if last else None,
        last_dialogue_id=row["last_dialogue_id"],
        disabled=row["disabled"],
    )
