"""The dialogue database: dialogues, turns, calls in flight, leases, asks and the model catalogue.

Written once over a backend (SQLite by default, PostgreSQL for more than one machine; see
bot/database.py for the SQL both run). Every write that belongs together is one transaction, so a
crash leaves either the whole turn (with the dialogue's totals) or none of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bot.database import Address, Backend, Params, Row, Writer, address
from bot.errors import DialogueNotFound, Duplicate, LeaseHeld, StateError, StoreError
from bot.models import (
    DRY_RUN,
    Ask,
    AudienceVote,
    Child,
    ContextPolicy,
    Dialogue,
    DialogueSpec,
    Limits,
    Lineage,
    LineageKind,
    LoopAction,
    ModelInfo,
    Note,
    NoteKind,
    Persona,
    Pricing,
    Status,
    StopReason,
    Tally,
    Totals,
    Turn,
    TurnStatus,
    Usage,
    plain,
)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _money(amount: Decimal | None) -> str | None:
    return plain(amount) if amount is not None else None


#: What processes tell each other through the database (PostgreSQL's NOTIFY): something was
#: asked of a dialogue (the key is its id), and a dialogue waits for a worker (key: its id).
ASKS = "asks"
WORK = "work"
#: A dialogue `d` with its lease `l` that should run and nobody runs, at the time $1: left for a
#: worker (a lease lapsed from the start, see hand_over) or by a process that stopped or died (its
#: lease lapsed). A dialogue that never had a lease is its starter's to run.
UNCLAIMED = "d.status IN ('pending', 'running') AND l.expires_at <= $1"
#: The owner of a lease a gateway wrote, lapsed from the start, to leave a dialogue for a worker.
HANDED_OVER = "nobody yet (left for a worker)"


def utc_now() -> datetime:
    """Return the wall clock in UTC: leases are about real processes, whatever clock a run keeps."""
    return datetime.now(UTC)


_PERSONA_COLUMNS = (
    "name, model, system_prompt, temperature, max_tokens, reasoning_effort, avatar_url, provider, "
    "prompt_price, completion_price, chat_format"
)


def _slots(first: int, count: int) -> str:
    """Return the placeholders `$first, …` for `count` values."""
    return ", ".join(f"${n}" for n in range(first, first + count))


# A persona's columns come after the two that say whose it is (a seat's dialogue and seat, say).
_PERSONA_SLOTS = _slots(3, len(_PERSONA_COLUMNS.split(",")))

#: A dialogue's row (as `d`), and whether it has children, a referee and a vote: read every turn,
#: so one statement says which of the three others are worth running.
_DIALOGUE = (
    "d.*, EXISTS (SELECT 1 FROM dialogues c WHERE c.parent_id = d.id) AS has_children, "
    "EXISTS (SELECT 1 FROM referees r WHERE r.dialogue_id = d.id) AS has_referee, "
    "EXISTS (SELECT 1 FROM votes v WHERE v.dialogue_id = d.id) AS has_vote"
)


def _persona_row(p: Persona) -> tuple[object, ...]:
    """Return a persona's values in the order of _PERSONA_COLUMNS (a seat's, or the referee's)."""
    return (
        p.name,
        p.model,
        p.system_prompt,
        p.temperature,
        p.max_tokens,
        p.reasoning_effort,
        p.avatar_url,
        p.provider,
        _money(p.prompt_price),
        _money(p.completion_price),
        p.chat_format,
    )


def _persona(row: Row) -> Persona:
    return Persona(
        name=row["name"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        temperature=row["temperature"],
        max_tokens=row["max_tokens"],
        reasoning_effort=row["reasoning_effort"],
        avatar_url=row["avatar_url"],
        provider=row["provider"],
        prompt_price=Decimal(row["prompt_price"]) if row["prompt_price"] else None,
        completion_price=Decimal(row["completion_price"]) if row["completion_price"] else None,
        chat_format=row["chat_format"],
    )


def _vote(row: Row) -> AudienceVote:
    return AudienceVote(
        question=row["question"],
        answers=tuple(json.loads(row["answers"])),
        opened_at=_dt(row["opened_at"]) or datetime.now(UTC),
        closes_at=_dt(row["closes_at"]) or datetime.now(UTC),
        counts=tuple(json.loads(row["counts"])) if row["counts"] is not None else None,
        closed_at=_dt(row["closed_at"]),
    )


def _check_money(amount: Decimal) -> None:
    """Refuse to store an amount that is not money: billing validates first, so this is a bug."""
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"refusing to store {amount} as an amount of money")


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _inserting(table: str, record: dict[str, object]) -> str:
    """Return the INSERT of one row from a record whose keys are the table's column names."""
    return f"INSERT INTO {table} ({', '.join(record)}) VALUES ({_slots(1, len(record))})"


async def _insert(conn: Writer, table: str, record: dict[str, object]) -> int:
    """Insert one row into a table keyed by `id`, and return the id it was given."""
    return await conn.insert(f"{_inserting(table, record)} RETURNING id", tuple(record.values()))


# The dialogues a spend report covers, filtered by the values of _spending_filter, in order.
_SPENDING = """
    SELECT d.id, d.origin, d.created_at, d.spent_usd, d.prompt_tokens, d.completion_tokens,
           r.guild_id, r.starter_id
      FROM dialogues d LEFT JOIN rooms r ON r.dialogue_id = d.id
     WHERE d.origin != $1
       AND (CAST($2 AS TEXT) IS NULL OR d.created_at >= $2)
       AND (CAST($3 AS BIGINT) IS NULL OR r.guild_id = $3)
       AND (CAST($4 AS BIGINT) IS NULL OR r.starter_id = $4)
"""


def _spending_filter(since: datetime | None, guild_id: int | None, member_id: int | None) -> Params:
    return (DRY_RUN, _iso(since), guild_id, member_id)


class Store:
    """The dialogue database. Open it with `async with Store.open(where) as store`."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.address = backend.address
        #: Who this process is, in the leases it takes: host, process id and a nonce (a pid is reused).
        self.owner = f"{socket.gethostname()} pid {os.getpid()} #{secrets.token_hex(2)}"

    @classmethod
    @asynccontextmanager
    async def open(cls, where: str | Path | Address) -> AsyncIterator[Store]:
        """Open (creating and migrating if needed) the database: a SQLite file's path, sqlite:///…
        or postgresql://…"""
        place = address(where)
        if place.kind == "postgresql":
            try:
                from bot.postgres import PostgresBackend  # asyncpg is the postgres extra's
            except ImportError:
                raise StoreError(
                    f"{place} is PostgreSQL, and its driver is not installed; pip install -e '.[postgres]'"
                ) from None

            async with PostgresBackend.open(place) as backend:
                yield cls(backend)
        else:
            from bot.sqlite import SqliteBackend

            async with SqliteBackend.open(place) as backend:
                yield cls(backend)

    @property
    def path(self) -> Path | None:
        """The SQLite file, if the database is one."""
        return self.address.path

    def transaction(self) -> AbstractAsyncContextManager[Writer]:
        """Run the block as one write transaction, committed at its end or rolled back on error."""
        return self._backend.transaction()

    async def write(self, sql: str, params: Params = ()) -> int:
        """Run one write that stands alone and return how many rows it changed: one statement is
        atomic by itself, so it needs no BEGIN … COMMIT around it."""
        return await self._backend.write_one(sql, params)

    async def fetchall(self, query: str, params: Params = ()) -> list[Row]:
        """Return the rows of one query."""
        return await self._backend.fetchall(query, params)

    def watch(self, topic: str, key: int) -> AbstractAsyncContextManager[asyncio.Event | None]:
        """Yield an event set when another process notifies `topic` for `key`, while the block
        runs; None on SQLite, where the watcher looks again on its interval."""
        return self._backend.watch(topic, key)

    # Dialogues -------------------------------------------------------------------------------

    async def create_dialogue(self, spec: DialogueSpec, now: datetime) -> Dialogue:
        """Store a new pending dialogue with its participants and return it."""
        limits = spec.limits
        async with self.transaction() as conn:
            dialogue_id = await _insert(
                conn,
                "dialogues",
                {
                    "origin": spec.origin,
                    "status": str(Status.PENDING),
                    "opening": spec.opening,
                    "max_rounds": limits.max_rounds,
                    "budget_usd": plain(limits.budget_usd),
                    "max_total_tokens": limits.max_total_tokens,
                    "max_seconds": limits.max_seconds,
                    "created_at": _iso(now),
                    "context_policy": str(spec.context_policy),
                    "loop_action": str(spec.loop_action),
                    "summary_model": spec.summary_model,
                    "parent_id": spec.parent.parent_id if spec.parent else None,
                    "parent_kind": str(spec.parent.kind) if spec.parent else None,
                    "parent_turns": spec.parent.turns if spec.parent else 0,
                    "seed": spec.seed,
                },
            )
            await conn.executemany(
                f"INSERT INTO participants (dialogue_id, seat, {_PERSONA_COLUMNS}) "
                f"VALUES ($1, $2, {_PERSONA_SLOTS})",
                [(dialogue_id, seat, *_persona_row(p)) for seat, p in enumerate(spec.participants)],
            )
            if spec.referee is not None:
                await conn.execute(
                    f"INSERT INTO referees (dialogue_id, every_rounds, {_PERSONA_COLUMNS}) "
                    f"VALUES ($1, $2, {_PERSONA_SLOTS})",
                    (dialogue_id, spec.referee_every, *_persona_row(spec.referee)),
                )
            # Carried-over turns belong to this dialogue's history but not to its totals.
            for turn in spec.inherited:
                await self._insert_turn(conn, replace(turn, dialogue_id=dialogue_id, inherited=True))
            for note in spec.inherited_notes:
                await self._insert_note(conn, replace(note, dialogue_id=dialogue_id), inherited=True)
        return await self.get_dialogue(dialogue_id)

    async def get_dialogue(self, dialogue_id: int) -> Dialogue:
        """Return the dialogue with this id, or raise DialogueNotFound."""
        rows = await self.fetchall(f"SELECT {_DIALOGUE} FROM dialogues d WHERE d.id = $1", (dialogue_id,))
        if not rows:
            raise DialogueNotFound(f"no dialogue {dialogue_id}; `voices list` shows the ids")
        return await self._dialogue(rows[0])

    async def list_dialogues(self, limit: int = 20, status: Iterable[Status] = ()) -> list[Dialogue]:
        """Return the most recent dialogues, newest first, optionally only in the given states."""
        wanted = [str(s) for s in status]
        where = f"WHERE d.status IN ({_slots(2, len(wanted))})" if wanted else ""
        rows = await self.fetchall(
            f"SELECT {_DIALOGUE} FROM dialogues d {where} ORDER BY d.id DESC LIMIT $1", (limit, *wanted)
        )
        return [await self._dialogue(row) for row in rows]

    async def _dialogue(self, row: Row) -> Dialogue:
        seats = await self.fetchall(
            "SELECT * FROM participants WHERE dialogue_id = $1 ORDER BY seat", (row["id"],)
        )
        # Most dialogues have no children, referee or vote: the row says which to look for.
        children = referee = vote = []
        if row["has_children"]:
            children = await self.fetchall(
                "SELECT id, parent_kind FROM dialogues WHERE parent_id = $1 ORDER BY id", (row["id"],)
            )
        if row["has_referee"]:
            referee = await self.fetchall("SELECT * FROM referees WHERE dialogue_id = $1", (row["id"],))
        if row["has_vote"]:
            vote = await self.fetchall("SELECT * FROM votes WHERE dialogue_id = $1", (row["id"],))
        return Dialogue(
            id=row["id"],
            participants=tuple(_persona(p) for p in seats),
            opening=row["opening"],
            limits=Limits(
                max_rounds=row["max_rounds"],
                budget_usd=Decimal(row["budget_usd"]),
                max_total_tokens=row["max_total_tokens"],
                max_seconds=row["max_seconds"],
            ),
            status=Status(row["status"]),
            origin=row["origin"],
            created_at=_dt(row["created_at"]) or datetime.now(UTC),
            started_at=_dt(row["started_at"]),
            ended_at=_dt(row["ended_at"]),
            stop_reason=StopReason(row["stop_reason"]) if row["stop_reason"] else None,
            stop_detail=row["stop_detail"],
            totals=Totals(
                spent_usd=Decimal(row["spent_usd"]),
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                reasoning_tokens=row["reasoning_tokens"],
                interrupted_calls=row["interrupted_calls"],
            ),
            context_policy=ContextPolicy(row["context_policy"]),
            loop_action=LoopAction(row["loop_action"]),
            summary_model=row["summary_model"],
            parent=Lineage(row["parent_id"], LineageKind(row["parent_kind"]), row["parent_turns"])
            if row["parent_id"] is not None
            else None,
            children=tuple(Child(c["id"], LineageKind(c["parent_kind"])) for c in children),
            seed=row["seed"],
            referee=_persona(referee[0]) if referee else None,
            referee_every=referee[0]["every_rounds"] if referee else None,
            vote=_vote(vote[0]) if vote else None,
        )

    # Spend ------------------------------------------------------------------------------------

    async def spending(
        self, since: datetime | None = None, guild_id: int | None = None, member_id: int | None = None
    ) -> list[Row]:
        """Return each dialogue's spend and tokens with where it ran and who started it (a Discord
        room's guild and starter; none for the command line's), dry runs left out."""
        return await self.fetchall(
            f"SELECT * FROM ({_SPENDING}) AS chosen ORDER BY id", _spending_filter(since, guild_id, member_id)
        )

    async def spending_by_model(
        self, since: datetime | None = None, guild_id: int | None = None, member_id: int | None = None
    ) -> list[Row]:
        """Return what each model cost in the same dialogues as `spending`: their own turns and
        summaries, each call once (copies carried into a fork or continuation are not counted again)."""
        return await self.fetchall(
            f"""WITH chosen AS (SELECT id FROM ({_SPENDING}) AS spending)
                SELECT dialogue_id, model_used AS model, prompt_tokens, completion_tokens, cost_usd
                  FROM turns WHERE inherited = 0 AND dialogue_id IN (SELECT id FROM chosen)
                UNION ALL
                SELECT dialogue_id, model, prompt_tokens, completion_tokens, cost_usd
                  FROM notes
                 WHERE inherited = 0 AND model IS NOT NULL AND dialogue_id IN (SELECT id FROM chosen)""",
            _spending_filter(since, guild_id, member_id),
        )

    async def delete_dialogue(self, dialogue_id: int) -> None:
        """Remove a dialogue that never got going (nothing spent), with everything that hangs off it."""
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM dialogues WHERE id = $1 AND status = 'pending'", (dialogue_id,))

    async def mark_running(self, dialogue_id: int, now: datetime) -> None:
        """Record that the dialogue runs (again); its first start time is kept."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE dialogues SET status = 'running', started_at = COALESCE(started_at, $1) "
                "WHERE id = $2",
                (_iso(now), dialogue_id),
            )

    async def mark_paused(self, dialogue_id: int) -> None:
        """Record that the dialogue waits to be resumed."""
        async with self.transaction() as conn:
            await self._fence(conn, dialogue_id, utc_now())
            await conn.execute("UPDATE dialogues SET status = 'paused' WHERE id = $1", (dialogue_id,))

    async def finish_dialogue(
        self, dialogue_id: int, reason: StopReason, detail: str | None, now: datetime
    ) -> None:
        """Record the dialogue's end: its final status, the reason and when."""
        async with self.transaction() as conn:
            await self._fence(conn, dialogue_id, utc_now())
            await conn.execute(
                "UPDATE dialogues SET status = $1, stop_reason = $2, stop_detail = $3, ended_at = $4 "
                "WHERE id = $5",
                (str(reason.status), str(reason), detail, _iso(now), dialogue_id),
            )

    # Leases ----------------------------------------------------------------------------------

    async def take_lease(self, dialogue_id: int, seconds: float) -> None:
        """Take the dialogue's lease for this process, or raise LeaseHeld naming the live holder.

        A lease whose holder stopped renewing it (a process killed) is taken over once it lapses.
        """
        now = utc_now()
        async with self.transaction() as conn:
            await self._fence(conn, dialogue_id, now)
            await conn.execute(
                "INSERT INTO leases (dialogue_id, owner, taken_at, renewed_at, expires_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dialogue_id) DO UPDATE SET owner = $2, "
                "taken_at = $3, renewed_at = $4, expires_at = $5",
                (dialogue_id, self.owner, _iso(now), _iso(now), _iso(now + timedelta(seconds=seconds))),
            )

    async def renew_lease(self, dialogue_id: int, seconds: float) -> bool:
        """Extend this process's lease; False when it is no longer ours (another took it over)."""
        now = utc_now()
        changed = await self.write(
            "UPDATE leases SET renewed_at = $1, expires_at = $2 WHERE dialogue_id = $3 AND owner = $4",
            (_iso(now), _iso(now + timedelta(seconds=seconds)), dialogue_id, self.owner),
        )
        return changed == 1

    async def release_lease(self, dialogue_id: int) -> None:
        """Give up this process's lease, so another may run the dialogue at once. The lease is
        left lapsed, not deleted: a dialogue this process stopped relaying while it should still
        run (a worker shut down) is then what the other workers look for, as if this one died."""
        now = _iso(utc_now())
        await self.write(
            "UPDATE leases SET renewed_at = $1, expires_at = $1 WHERE dialogue_id = $2 AND owner = $3",
            (now, dialogue_id, self.owner),
        )

    async def hand_over(self, dialogue_id: int) -> bool:
        """Leave the dialogue for a worker process to run (`voices worker`): a lease that has
        lapsed already, which is what a worker looks for, and a paused dialogue marked running
        again. False, and nothing changed, when a live process runs it already."""
        now = utc_now()
        async with self.transaction() as conn:
            if await self._holder(conn, dialogue_id, now) is not None:
                return False
            await conn.execute(
                "UPDATE dialogues SET status = 'running' WHERE id = $1 AND status = 'paused'", (dialogue_id,)
            )
            await conn.execute(
                "INSERT INTO leases (dialogue_id, owner, taken_at, renewed_at, expires_at) "
                "VALUES ($1, $2, $3, $3, $3) ON CONFLICT (dialogue_id) DO UPDATE SET owner = $2, "
                "taken_at = $3, renewed_at = $3, expires_at = $3",
                (dialogue_id, HANDED_OVER, _iso(now)),
            )
        await self._backend.notify(WORK, dialogue_id)
        return True

    async def unclaimed(self, now: datetime, limit: int) -> list[int]:
        """Return up to `limit` dialogues that should run and nobody runs (see UNCLAIMED), oldest
        first, leaving out those shown in a chat (RoomStore.unclaimed has those)."""
        rows = await self.fetchall(
            f"SELECT d.id FROM dialogues d JOIN leases l ON l.dialogue_id = d.id WHERE {UNCLAIMED} "
            "AND NOT EXISTS (SELECT 1 FROM rooms r WHERE r.dialogue_id = d.id) ORDER BY d.id LIMIT $2",
            (_iso(now), limit),
        )
        return [row[0] for row in rows]

    async def _holder(self, conn: Writer, dialogue_id: int, now: datetime) -> tuple[str, datetime] | None:
        """Return who holds a live lease on the dialogue and until when; None when nobody does
        (no lease, or one that lapsed with a process that died). The dialogue is held against
        other writers from here to the end of the transaction, so the answer stays true in it."""
        await conn.lock(dialogue_id)
        rows = await conn.fetchall(
            "SELECT owner, expires_at FROM leases WHERE dialogue_id = $1", (dialogue_id,)
        )
        expires = _dt(rows[0]["expires_at"]) if rows else None
        return (rows[0]["owner"], expires) if expires is not None and expires > now else None

    async def _fence(self, conn: Writer, dialogue_id: int, now: datetime) -> None:
        """Raise LeaseHeld if another process holds a live lease on the dialogue: it alone may
        write the dialogue's calls, turns and state (inside the caller's transaction)."""
        holder = await self._holder(conn, dialogue_id, now)
        if holder is None or holder[0] == self.owner:
            return
        owner, expires = holder
        left = (expires - now).total_seconds()
        raise LeaseHeld(
            f"dialogue {dialogue_id} is being run by another process ({owner}); "
            f"if that process has died, its lease lapses in {left:.0f} s and it can be resumed then",
            seconds_left=left,
        )

    # Asks from other processes ---------------------------------------------------------------

    async def ask(self, dialogue_id: int, action: Ask, text: str | None = None) -> bool:
        """Leave a stop, a pause or a member's words (`text`) for the process that runs the
        dialogue. False, and nothing left, when no live lease says one does: nobody would take it."""
        now = utc_now()  # the clock leases are written by
        async with self.transaction() as conn:
            if await self._holder(conn, dialogue_id, now) is None:
                return False
            await conn.execute(
                "INSERT INTO asks (dialogue_id, action, text, asked_at) VALUES ($1, $2, $3, $4)",
                (dialogue_id, str(action), text, _iso(now)),
            )
        await self._backend.notify(ASKS, dialogue_id)  # taken at once, not at the next look
        return True

    async def take_asks(self, dialogue_id: int, within: float | None = None) -> list[tuple[Ask, str | None]]:
        """Return what was asked of the dialogue since the last look (with a member's words),
        oldest first, each once. With `within`, asks older than that many seconds are taken too
        (never returned again) but left out."""
        rows = await self.fetchall(
            "SELECT id, action, text, asked_at FROM asks WHERE dialogue_id = $1 AND taken_at IS NULL "
            "ORDER BY id",
            (dialogue_id,),
        )
        if not rows:
            return []  # what nearly every look finds: one read, no write
        now = utc_now()  # the clock asks are written by
        oldest = now - timedelta(seconds=within) if within is not None else None
        taken: list[tuple[Ask, str | None]] = []
        async with self.transaction() as conn:
            for row in rows:
                claimed = await conn.update(
                    "UPDATE asks SET taken_at = $1 WHERE id = $2 AND taken_at IS NULL", (_iso(now), row["id"])
                )
                if claimed and (oldest is None or datetime.fromisoformat(row["asked_at"]) >= oldest):
                    taken.append((Ask(row["action"]), row["text"]))
        return taken

    # Turns and calls -------------------------------------------------------------------------

    async def begin_call(
        self, dialogue_id: int, seq: int, reserved: Decimal, now: datetime, billed: Decimal = Decimal(0)
    ) -> None:
        """Note a call about to be sent, with its reservation, before any money can be spent; for a
        retry, with what the turn's earlier tries were `billed`."""
        async with self.transaction() as conn:
            await self._fence(conn, dialogue_id, utc_now())
            await conn.execute(
                "INSERT INTO calls_in_flight (dialogue_id, seq, reserved_usd, started_at, billed_usd) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dialogue_id, seq) DO UPDATE "
                "SET reserved_usd = $3, started_at = $4, billed_usd = $5, generation_id = NULL",
                (dialogue_id, seq, plain(reserved), _iso(now), plain(billed)),
            )

    async def note_generation(self, dialogue_id: int, seq: int, generation_id: str) -> None:
        """Keep the provider's id of a call in flight, to ask what it cost if this process dies."""
        await self.write(
            "UPDATE calls_in_flight SET generation_id = $1 WHERE dialogue_id = $2 AND seq = $3",
            (generation_id, dialogue_id, seq),
        )

    async def calls_in_flight(self, dialogue_id: int) -> list[tuple[int, Decimal, str | None]]:
        """Return the calls a dead process left unsettled: (turn number, reservation, generation id)."""
        rows = await self.fetchall(
            "SELECT seq, reserved_usd, generation_id FROM calls_in_flight WHERE dialogue_id = $1 "
            "ORDER BY seq",
            (dialogue_id,),
        )
        return [(r["seq"], Decimal(r["reserved_usd"]), r["generation_id"]) for r in rows]

    async def cancel_call(self, dialogue_id: int, seq: int) -> None:
        """Forget a call that was never billed (it failed before the provider accepted it)."""
        async with self.transaction() as conn:
            await self._settle_call(conn, dialogue_id, seq)

    async def settle_interrupted_calls(
        self, dialogue_id: int, billed: dict[int, Decimal] | None = None
    ) -> Decimal:
        """Charge every call a dead process left unsettled: what its provider `billed` it (by turn
        number), or else its reservation, and what the turn's earlier tries were billed. Return the sum."""
        billed = billed or {}
        async with self.transaction() as conn:
            rows = await conn.fetchall(
                "SELECT seq, reserved_usd, billed_usd FROM calls_in_flight WHERE dialogue_id = $1",
                (dialogue_id,),
            )
            amounts = [
                Decimal(r["billed_usd"]) + billed.get(r["seq"], Decimal(r["reserved_usd"])) for r in rows
            ]
            if not amounts:
                return Decimal(0)
            total = sum(amounts, Decimal(0))
            spent = await self._spent(conn, dialogue_id)
            await conn.execute(
                "UPDATE dialogues SET spent_usd = $1, interrupted_calls = interrupted_calls + $2 "
                "WHERE id = $3",
                (plain(spent + total), len(amounts), dialogue_id),
            )
            await conn.execute("DELETE FROM calls_in_flight WHERE dialogue_id = $1", (dialogue_id,))
        return total

    async def add_turn(self, turn: Turn, notes: Sequence[Note] = ()) -> list[Note]:
        """Commit a finished turn, settle its call and add it to the dialogue's totals, atomically,
        with the notes that say what was wrong with its bill; return those notes as stored."""
        async with self.transaction() as conn:
            await self._fence(conn, turn.dialogue_id, utc_now())
            try:
                await self._insert_turn(conn, turn)
            except Duplicate:
                raise StateError(
                    f"turn {turn.seq + 1} of dialogue {turn.dialogue_id} was already written; "
                    "another process is running this dialogue"
                ) from None
            await self._charge(conn, turn.dialogue_id, turn.cost_usd, turn.usage)
            await self._settle_call(conn, turn.dialogue_id, turn.seq)
            return [replace(note, id=await self._insert_note(conn, note)) for note in notes]

    @staticmethod
    async def _insert_turn(conn: Writer, turn: Turn) -> None:
        record = turn.record()
        await conn.execute(_inserting("turns", record), tuple(record.values()))

    @staticmethod
    async def _spent(conn: Writer, dialogue_id: int) -> Decimal:
        """Return what the dialogue has spent, holding it until the caller's transaction ends: the
        new total is written from this one, and must not be another writer's too."""
        await conn.lock(dialogue_id)
        rows = await conn.fetchall("SELECT spent_usd FROM dialogues WHERE id = $1", (dialogue_id,))
        return Decimal(rows[0][0])

    async def _charge(self, conn: Writer, dialogue_id: int, cost: Decimal, usage: Usage) -> None:
        """Add a call's cost and tokens to the dialogue's totals (inside the caller's transaction)."""
        _check_money(cost)
        spent = await self._spent(conn, dialogue_id)
        await conn.execute(
            """UPDATE dialogues SET spent_usd = $1, prompt_tokens = prompt_tokens + $2,
                   completion_tokens = completion_tokens + $3, reasoning_tokens = reasoning_tokens + $4
               WHERE id = $5""",
            (
                plain(spent + cost),
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.reasoning_tokens,
                dialogue_id,
            ),
        )

    @staticmethod
    async def _settle_call(conn: Writer, dialogue_id: int, seq: int) -> None:
        """Forget the call in flight under turn `seq`: its cost is now on record."""
        await conn.execute(
            "DELETE FROM calls_in_flight WHERE dialogue_id = $1 AND seq = $2", (dialogue_id, seq)
        )

    async def list_turns(self, dialogue_id: int) -> list[Turn]:
        """Return the dialogue's committed turns in order."""
        rows = await self.fetchall(
            """SELECT t.*, p.name AS speaker FROM turns t
               JOIN participants p ON p.dialogue_id = t.dialogue_id AND p.seat = t.seat
               WHERE t.dialogue_id = $1 ORDER BY t.seq""",
            (dialogue_id,),
        )
        return [
            Turn(
                dialogue_id=r["dialogue_id"],
                seq=r["seq"],
                round=r["round"],
                seat=r["seat"],
                speaker=r["speaker"],
                status=TurnStatus(r["status"]),
                text=r["text"],
                reasoning=r["reasoning"],
                usage=Usage(
                    r["prompt_tokens"],
                    r["completion_tokens"],
                    r["reasoning_tokens"],
                    Decimal(r["cost_usd"]),
                    r["cached_tokens"],
                    r["cache_write_tokens"],
                    bool(r["usage_estimated"]),
                ),
                cost_usd=Decimal(r["cost_usd"]),
                cost_source=r["cost_source"],
                model_used=r["model_used"],
                finish_reason=r["finish_reason"],
                latency_ms=r["latency_ms"],
                attempts=r["attempts"],
                started_at=_dt(r["started_at"]) or datetime.now(UTC),
                ended_at=_dt(r["ended_at"]) or datetime.now(UTC),
                generation_id=r["generation_id"],
                provider=r["provider"],
                cache_saving_usd=Decimal(r["cache_saving_usd"]),
                inherited=bool(r["inherited"]),
            )
            for r in rows
        ]

    async def tally(self, dialogue_id: int) -> Tally:
        """Return what the dialogue's turns add up to, summed where they are kept: a status shown at
        every turn used to read every turn whole (text and all, 3.4 ms at 200 turns), twice a turn."""
        rows = await self.fetchall(
            """SELECT seat, inherited, COUNT(*) AS turns, SUM(prompt_tokens) AS prompt,
                      SUM(completion_tokens) AS completion, SUM(reasoning_tokens) AS reasoning,
                      SUM(cached_tokens) AS cached, SUM(cache_write_tokens) AS written
                 FROM turns WHERE dialogue_id = $1 GROUP BY seat, inherited""",
            (dialogue_id,),
        )
        # Money is summed as Decimal here, not by the database, which would add the text as floats.
        savings = await self.fetchall(
            """SELECT cache_saving_usd FROM turns
                WHERE dialogue_id = $1 AND inherited = 0 AND cache_saving_usd <> '0'""",
            (dialogue_id,),
        )
        seats = {
            r["seat"]: Usage(
                int(r["prompt"]),
                int(r["completion"]),
                int(r["reasoning"]),
                cached_tokens=int(r["cached"]),
                cache_write_tokens=int(r["written"]),
            )
            for r in rows
            if not r["inherited"]
        }
        saved = sum((Decimal(r["cache_saving_usd"]) for r in savings), start=Decimal(0))
        return Tally(sum(int(r["turns"]) for r in rows), seats, saved)

    async def history(self, dialogue_id: int) -> tuple[Dialogue, list[Turn], list[Note]]:
        """Return the dialogue with its turns and notes: everything a transcript shows."""
        return (
            await self.get_dialogue(dialogue_id),
            await self.list_turns(dialogue_id),
            await self.list_notes(dialogue_id),
        )

    # Notes -----------------------------------------------------------------------------------

    async def add_note(self, note: Note, settles_seq: int | None = None) -> Note:
        """Store a note; a compaction's cost joins the dialogue's totals in the same transaction.

        `settles_seq` names the call in flight whose reservation the note's call used (the summary
        is made under the next turn's number), so a crash after this commit charges it only once.
        """
        async with self.transaction() as conn:
            note_id = await self._record_note(conn, note, settles_seq)
        return replace(note, id=note_id)

    async def add_interjection(
        self, dialogue_id: int, author: str, text: str, now: datetime, author_id: str | None = None
    ) -> Note:
        """Store a spectator's note at the next turn boundary: after the turn in flight, if any."""
        async with self.transaction() as conn:
            done = await conn.fetchall("SELECT COUNT(*) FROM turns WHERE dialogue_id = $1", (dialogue_id,))
            flying = await conn.fetchall(
                "SELECT COUNT(*) FROM calls_in_flight WHERE dialogue_id = $1 AND seq = $2",
                (dialogue_id, done[0][0]),
            )
            note = Note(
                dialogue_id,
                done[0][0] + flying[0][0],
                NoteKind.INTERJECTION,
                text,
                now,
                author=author,
                author_id=author_id,
            )
            note_id = await self._insert_note(conn, note)
        return replace(note, id=note_id)

    async def remember(self, note: Note, system_prompts: Sequence[str], settles_seq: int) -> None:
        """Give each participant its memory of an earlier dialogue, and bill the summary, atomically."""
        async with self.transaction() as conn:
            await self._record_note(conn, note, settles_seq)
            await conn.executemany(
                "UPDATE participants SET system_prompt = $1 WHERE dialogue_id = $2 AND seat = $3",
                [(prompt, note.dialogue_id, seat) for seat, prompt in enumerate(system_prompts)],
            )

    async def _record_note(self, conn: Writer, note: Note, settles_seq: int | None) -> int:
        """Insert a note, add its call's cost to the totals, and settle that call."""
        note_id = await self._insert_note(conn, note)
        if note.cost_usd or note.usage.prompt_tokens:
            await self._charge(conn, note.dialogue_id, note.cost_usd, note.usage)
        if settles_seq is not None:
            await self._settle_call(conn, note.dialogue_id, settles_seq)
        return note_id

    @staticmethod
    async def _insert_note(conn: Writer, note: Note, inherited: bool = False) -> int:
        record = {"dialogue_id": note.dialogue_id, **note.record(), "inherited": int(inherited)}
        note_id = await _insert(conn, "notes", record)
        assert note_id is not None
        return note_id

    async def list_notes(self, dialogue_id: int) -> list[Note]:
        """Return the dialogue's notes in the order they were made."""
        rows = await self.fetchall("SELECT * FROM notes WHERE dialogue_id = $1 ORDER BY id", (dialogue_id,))
        return [
            Note(
                dialogue_id=r["dialogue_id"],
                before_seq=r["before_seq"],
                kind=NoteKind(r["kind"]),
                text=r["text"],
                created_at=_dt(r["created_at"]) or datetime.now(UTC),
                first_kept_seq=r["first_kept_seq"],
                model=r["model"],
                usage=Usage(r["prompt_tokens"], r["completion_tokens"]),
                cost_usd=Decimal(r["cost_usd"]),
                author=r["author"],
                author_id=r["author_id"],
                id=r["id"],
            )
            for r in rows
        ]

    async def extend_rounds(self, dialogue_id: int, max_rounds: int, reopen: bool) -> None:
        """Set a new round limit; with `reopen`, a dialogue that ended on it waits to be resumed."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE dialogues SET max_rounds = $1 WHERE id = $2", (max_rounds, dialogue_id)
            )
            if reopen:
                await conn.execute(
                    "UPDATE dialogues SET status = 'paused', stop_reason = NULL, stop_detail = NULL, "
                    "ended_at = NULL WHERE id = $1",
                    (dialogue_id,),
                )

    # Bookkeeping ---------------------------------------------------------------------------------

    async def get_state(self, key: str) -> str | None:
        """Return a bookkeeping value (such as the hash of the last synced commands)."""
        rows = await self.fetchall("SELECT value FROM bot_state WHERE key = $1", (key,))
        return rows[0][0] if rows else None

    async def set_state(self, key: str, value: str) -> None:
        """Store a bookkeeping value."""
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO bot_state (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = $2",
                (key, value),
            )

    # Catalogue -------------------------------------------------------------------------------

    async def save_models(self, source: str, models: list[ModelInfo], now: datetime) -> None:
        """Replace the cached catalogue of `source`."""
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM models WHERE source = $1", (source,))
            await conn.executemany(
                "INSERT INTO models (source, id, name, context_length, max_completion_tokens, "
                "prompt_price, completion_price, request_price, reasoning_price, cache_read_price, "
                f"cache_write_price) VALUES ({_slots(1, 11)})",
                [
                    (
                        source,
                        m.id,
                        m.name,
                        m.context_length,
                        m.max_completion_tokens,
                        plain(m.pricing.prompt),
                        plain(m.pricing.completion),
                        plain(m.pricing.request),
                        plain(m.pricing.internal_reasoning),
                        _money(m.pricing.cache_read),
                        _money(m.pricing.cache_write),
                    )
                    for m in models
                ],
            )
            await conn.execute(
                "INSERT INTO catalogue_fetches (source, fetched_at) VALUES ($1, $2) "
                "ON CONFLICT (source) DO UPDATE SET fetched_at = $2",
                (source, _iso(now)),
            )

    async def load_models(self, source: str) -> tuple[datetime | None, list[ModelInfo]]:
        """Return when the catalogue of `source` was fetched and its models (None, [] if never)."""
        fetched = await self.fetchall("SELECT fetched_at FROM catalogue_fetches WHERE source = $1", (source,))
        if not fetched:
            return None, []
        rows = await self.fetchall("SELECT * FROM models WHERE source = $1 ORDER BY id", (source,))
        models = [
            ModelInfo(
                id=r["id"],
                name=r["name"],
                context_length=r["context_length"],
                max_completion_tokens=r["max_completion_tokens"],
                pricing=Pricing(
                    prompt=Decimal(r["prompt_price"]),
                    completion=Decimal(r["completion_price"]),
                    request=Decimal(r["request_price"]),
                    internal_reasoning=Decimal(r["reasoning_price"]),
                    cache_read=Decimal(r["cache_read_price"]) if r["cache_read_price"] else None,
                    cache_write=Decimal(r["cache_write_price"]) if r["cache_write_price"] else None,
                ),
            )
            for r in rows
        ]
        return _dt(fetched[0]["fetched_at"]), models
