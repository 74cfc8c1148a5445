"""Copying a whole Voices database into an empty one, of either kind: SQLite to PostgreSQL when a
deployment outgrows one process, or back.

The copy is one transaction on the target, so a copy that fails leaves the target as empty as it
was. Rows keep their ids, so dialogue 42 is dialogue 42 in both. Money is copied as the text it is
stored as, so totals match to the digit, and the copy is counted table by table before it is
called done.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from bot.database import Address, Writer, address
from bot.errors import InputError
from bot.store import Store, utc_now
from bot.text import counted

#: Every table, parents before children, each with the columns that order its rows.
TABLES: tuple[tuple[str, str], ...] = (
    ("dialogues", "id"),
    ("participants", "dialogue_id, seat"),
    ("turns", "dialogue_id, seq"),
    ("calls_in_flight", "dialogue_id, seq"),
    ("notes", "id"),
    ("referees", "dialogue_id"),
    ("votes", "dialogue_id"),
    ("rooms", "dialogue_id"),
    ("leases", "dialogue_id"),
    ("asks", "id"),
    ("schedules", "id"),
    ("guild_settings", "guild_id"),
    ("bot_state", "key"),
    ("models", "source, id"),
    ("catalogue_fetches", "source"),
)
#: The tables whose ids the database hands out; the target's next id must follow the copied ones.
NUMBERED = ("dialogues", "notes", "asks", "schedules")
BATCH = 1000


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy moved, counted in the target after it was written."""

    source: Address
    target: Address
    rows: dict[str, int]
    spent_usd: Decimal

    def describe(self) -> str:
        held = ", ".join(
            counted(self.rows[table], noun)
            for table, noun in (("turns", "turn"), ("notes", "note"), ("rooms", "room"))
        )
        return (
            f"copied {counted(self.rows['dialogues'], 'dialogue')} ({held}; spent "
            f"${self.spent_usd}) from {self.source} to {self.target}"
        )


async def copy_database(source: str | Path | Address, target: str | Path | Address) -> Copied:
    """Copy every row of `source` into the empty database `target`; return what was copied."""
    origin, destination = address(source, "name another SOURCE"), address(target, "name another TARGET")
    if origin == destination:
        raise InputError(f"{origin} is both the source and the target; name two databases")
    if origin.path is not None and not origin.path.exists():
        raise InputError(f"there is no database at {origin}; give the path of the one to copy")
    async with Store.open(origin) as old, Store.open(destination) as new:
        if running := await _running(old):
            # Its rows would move while they are read: the copy would be of no one moment.
            raise InputError(
                f"{origin} has {counted(running, 'dialogue')} running (a live lease); stop Voices "
                "there first, then copy"
            )
        if held := await _counts(new):
            raise InputError(f"{destination} already holds {_rows(held)}; copy into an empty database")
        async with new.transaction() as conn:
            for table, order in TABLES:
                await _copy_table(old, conn, table, order)
            for table in NUMBERED:
                await conn.follow_ids(table)
        wanted, got = await _counts(old), await _counts(new)
        if wanted != got:  # a bug, not a person's mistake: say what differs
            raise RuntimeError(f"the copy does not match its source: {wanted} rows, {got} copied")
        return Copied(origin, destination, {t: got.get(t, 0) for t, _ in TABLES}, await _spent(new))


async def _copy_table(source: Store, target: Writer, table: str, order: str) -> None:
    """Copy a table in batches, each starting after the last key of the one before (an OFFSET
    would read every row before it again: a year of turns, read quadratically)."""
    keys = [k.strip() for k in order.split(",")]
    after = ", ".join(f"${n}" for n in range(2, len(keys) + 2))
    first = f"SELECT * FROM {table} ORDER BY {order} LIMIT $1"
    rest = f"SELECT * FROM {table} WHERE ({order}) > ({after}) ORDER BY {order} LIMIT $1"
    rows = await source.fetchall(first, (BATCH,))
    while rows:
        columns = list(rows[0].keys())
        slots = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        await target.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({slots})",
            [tuple(row[c] for c in columns) for row in rows],
        )
        if len(rows) < BATCH:
            break
        rows = await source.fetchall(rest, (BATCH, *(rows[-1][k] for k in keys)))


async def _running(store: Store) -> int:
    """Return how many dialogues a live process holds."""
    rows = await store.fetchall(
        "SELECT COUNT(*) FROM leases l JOIN dialogues d ON d.id = l.dialogue_id "
        "WHERE l.expires_at > $1 AND d.status IN ('pending', 'running')",
        (utc_now().isoformat(),),
    )
    return int(rows[0][0])


async def _counts(store: Store) -> dict[str, int]:
    """Return the number of rows in each table that has any."""
    counts = {}
    for table, _ in TABLES:
        rows = await store.fetchall(f"SELECT COUNT(*) FROM {table}")
        if rows[0][0]:
            counts[table] = int(rows[0][0])
    return counts


async def _spent(store: Store) -> Decimal:
    rows = await store.fetchall("SELECT spent_usd FROM dialogues")
    return sum((Decimal(r[0]) for r in rows), Decimal(0))


def _rows(counts: dict[str, int]) -> str:
    dialogues = counts.get("dialogues", 0)
    return f"{counted(dialogues, 'dialogue')} and {counted(sum(counts.values()) - dialogues, 'other row')}"
