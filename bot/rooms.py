"""Rooms: where a dialogue is shown in a chat (guild, channel, thread), who started it, how far posting got.

Ids are plain integers; nothing here knows which chat service they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bot.database import Row
from bot.errors import DialogueNotFound
from bot.models import Status
from bot.store import UNCLAIMED, Store


@dataclass(frozen=True, slots=True)
class Room:
    """One dialogue's place: its thread, its starter, its status message and posting progress."""

    dialogue_id: int
    guild_id: int
    channel_id: int
    thread_id: int
    starter_id: int
    status_message_id: int | None = None
    posted_seq: int = -1
    live_message_ids: tuple[int, ...] = ()
    #: The messages of turn `posted_seq`: its last edit may still have been on its way at a crash.
    posted_message_ids: tuple[int, ...] = ()
    #: The message asking a member for their turn, while one is.
    asking_message_id: int | None = None
    #: The thread's first message (the opening, or a fork's origin); None until it is posted.
    opening_message_id: int | None = None


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(",") if i)


def _room(row: Row) -> Room:
    return Room(
        row["dialogue_id"],
        row["guild_id"],
        row["channel_id"],
        row["thread_id"],
        row["starter_id"],
        row["status_message_id"],
        row["posted_seq"],
        _ids(row["live_message_ids"]),
        _ids(row["posted_message_ids"]),
        row["asking_message_id"],
        row["opening_message_id"],
    )


class RoomStore:
    """Rooms in the dialogue database."""

    def __init__(self, store: Store):
        self._store = store

    async def create(self, room: Room) -> Room:
        """Record a new room."""
        async with self._store.transaction() as conn:
            await conn.execute(
                "INSERT INTO rooms (dialogue_id, guild_id, channel_id, thread_id, starter_id, posted_seq) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                (
                    room.dialogue_id,
                    room.guild_id,
                    room.channel_id,
                    room.thread_id,
                    room.starter_id,
                    room.posted_seq,
                ),
            )
        return await self.get(room.dialogue_id)

    async def get(self, dialogue_id: int) -> Room:
        """Return the room of a dialogue, or raise DialogueNotFound."""
        rows = await self._store.fetchall("SELECT * FROM rooms WHERE dialogue_id = $1", (dialogue_id,))
        if not rows:
            raise DialogueNotFound(f"no dialogue {dialogue_id} in this server; `/voices list` shows them")
        return _room(rows[0])

    async def in_thread(self, thread_id: int) -> Room | None:
        """Return the room shown in this thread, if any."""
        rows = await self._store.fetchall("SELECT * FROM rooms WHERE thread_id = $1", (thread_id,))
        return _room(rows[0]) if rows else None

    async def in_states(self, *states: Status) -> list[Room]:
        """Return the rooms whose dialogue is in one of these states, oldest first."""
        marks = ", ".join(f"${n}" for n in range(1, len(states) + 1))
        rows = await self._store.fetchall(
            f"SELECT r.* FROM rooms r JOIN dialogues d ON d.id = r.dialogue_id "
            f"WHERE d.status IN ({marks}) ORDER BY r.dialogue_id",
            tuple(str(s) for s in states),
        )
        return [_room(r) for r in rows]

    async def unclaimed(self, now: datetime, limit: int) -> list[Room]:
        """Return up to `limit` rooms whose dialogue should run and nobody runs: left for a worker
        by a gateway (a lease lapsed from the start), or left by a process that died (its lease
        lapsed). Oldest first. A room whose dialogue never had a lease is its starter's to run."""
        rows = await self._store.fetchall(
            "SELECT r.* FROM rooms r JOIN dialogues d ON d.id = r.dialogue_id "
            f"JOIN leases l ON l.dialogue_id = d.id WHERE {UNCLAIMED} ORDER BY d.id LIMIT $2",
            (now.isoformat(), limit),
        )
        return [_room(r) for r in rows]

    async def recent(self, guild_id: int, limit: int = 10) -> list[Room]:
        """Return the guild's most recent rooms, newest first."""
        rows = await self._store.fetchall(
            "SELECT * FROM rooms WHERE guild_id = $1 ORDER BY dialogue_id DESC LIMIT $2", (guild_id, limit)
        )
        return [_room(r) for r in rows]

    async def set_status_message(self, dialogue_id: int, message_id: int) -> None:
        """Remember the message that shows the dialogue's status."""
        await self._update(dialogue_id, "status_message_id", message_id)

    async def set_opening_message(self, dialogue_id: int, message_id: int) -> None:
        """Remember that the thread's first message is posted."""
        await self._update(dialogue_id, "opening_message_id", message_id)

    async def set_asking_message(self, dialogue_id: int, message_id: int | None) -> None:
        """Remember the message asking a member for their turn (None once it is answered)."""
        await self._update(dialogue_id, "asking_message_id", message_id)

    async def set_live_messages(self, dialogue_id: int, message_ids: tuple[int, ...]) -> None:
        """Remember the messages of the turn being streamed, to clean them up after a crash."""
        await self._update(dialogue_id, "live_message_ids", ",".join(map(str, message_ids)))

    async def mark_posted(self, dialogue_id: int, seq: int, message_ids: tuple[int, ...]) -> None:
        """Record that turn `seq` is posted in these messages; no message is live any more."""
        async with self._store.transaction() as conn:
            await conn.execute(
                "UPDATE rooms SET posted_seq = $1, posted_message_ids = $2, live_message_ids = '' "
                "WHERE dialogue_id = $3",
                (seq, ",".join(map(str, message_ids)), dialogue_id),
            )

    async def _update(self, dialogue_id: int, column: str, value: object) -> None:
        await self._store.write(
            f"UPDATE rooms SET {column} = $1 WHERE dialogue_id = $2", (value, dialogue_id)
        )

    async def committed(self, guild_id: int, since: datetime, starter_id: int | None = None) -> Decimal:
        """Return the money a guild (or one member) has committed since `since`.

        A dialogue still able to spend counts at its whole budget, an ended one at what it spent,
        so that daily caps hold even while dialogues run side by side.
        """
        query = (
            "SELECT d.status, d.budget_usd, d.spent_usd FROM rooms r "
            "JOIN dialogues d ON d.id = r.dialogue_id WHERE r.guild_id = $1 AND d.created_at >= $2"
        )
        params: tuple[object, ...] = (guild_id, since.isoformat())
        if starter_id is not None:
            query += " AND r.starter_id = $3"
            params += (starter_id,)
        total = Decimal(0)
        for row in await self._store.fetchall(query, params):
            final = Status(row["status"]).is_final
            total += Decimal(row["spent_usd"] if final else row["budget_usd"])
        return total

    async def active_count(self, guild_id: int) -> int:
        """Return how many of the guild's dialogues are pending, running or paused."""
        rows = await self._store.fetchall(
            "SELECT COUNT(*) FROM rooms r JOIN dialogues d ON d.id = r.dialogue_id "
            "WHERE r.guild_id = $1 AND d.status IN ('pending', 'running', 'paused')",
            (guild_id,),
        )
        return int(rows[0][0])
