"""The SQLite backend: one aiosqlite connection in WAL mode with foreign keys on, one writer at a time.

Every statement takes one trip to aiosqlite's thread: each trip costs the event loop more than the
statement does, so nothing here fetches or closes in a second one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from bot.database import Address, Params, Row
from bot.errors import Duplicate, StoreError
from bot.migrations import MIGRATIONS, refuse_newer


def _named(params: Params) -> dict[str, Any]:
    """Bind `$1`, `$2`, … by name: SQLite reads `$1` as the parameter "1". (Positional binding of
    named parameters is deprecated from Python 3.12.)"""
    return {str(number): value for number, value in enumerate(params, 1)}


async def _run(conn: aiosqlite.Connection, sql: str, params: Params) -> aiosqlite.Cursor:
    """Run one statement in one trip. A statement that returns rows is closed at once: left open
    (say, the row PRAGMA journal_mode returns) it would keep a statement "in progress" and block COMMIT."""
    try:
        cursor = await conn.execute(sql, _named(params))
    except sqlite3.IntegrityError as exc:
        raise _duplicate(exc) from None
    if cursor.description is not None:
        await cursor.close()
    return cursor


def _duplicate(exc: sqlite3.IntegrityError) -> Exception:
    return Duplicate(str(exc)) if "UNIQUE" in str(exc) else exc


async def _fetch(conn: aiosqlite.Connection, sql: str, params: Params) -> list[Row]:
    try:
        return list(await conn.execute_fetchall(sql, _named(params)))
    except sqlite3.IntegrityError as exc:
        raise _duplicate(exc) from None


async def schema_version(conn: aiosqlite.Connection) -> int:
    """Return the version recorded in the database file."""
    rows = await _fetch(conn, "PRAGMA user_version", ())
    return int(rows[0][0]) if rows else 0


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every migration above the file's version, each in its own transaction; return the new version."""
    version = await schema_version(conn)
    for number, (_reason, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript would commit on its own; run the statements inside one explicit transaction
        # so a failed migration leaves the file at the version before it.
        await _run(conn, "BEGIN", ())
        try:
            for statement in _statements(sql):
                await _run(conn, statement, ())
            await _run(conn, f"PRAGMA user_version = {number}", ())
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
    return await schema_version(conn)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class SqliteWriter:
    """The connection inside a transaction."""

    def __init__(self, conn: aiosqlite.Connection):
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> None:
        await _run(self._conn, sql, params)

    async def insert(self, sql: str, params: Params = ()) -> int:
        rows = await _fetch(self._conn, sql, params)
        return int(rows[0][0])

    async def update(self, sql: str, params: Params = ()) -> int:
        return (await _run(self._conn, sql, params)).rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            async with self._conn.executemany(sql, [_named(row) for row in rows]):
                pass
        except sqlite3.IntegrityError as exc:
            raise _duplicate(exc) from None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await _fetch(self._conn, sql, params)

    async def lock(self, key: int) -> None:
        """Nothing to do: BEGIN IMMEDIATE already made this the only writer."""

    async def follow_ids(self, table: str) -> None:
        """Nothing to do: an INTEGER PRIMARY KEY is always one past the largest."""


def _try_open(address: Address) -> None:
    sqlite3.connect(address.path or ":memory:").close()


class SqliteBackend:
    """A SQLite database file. Open it with `async with SqliteBackend.open(address)`."""

    def __init__(self, conn: aiosqlite.Connection, address: Address):
        self._conn = conn
        self.address = address
        # One connection is shared by every task; this keeps their transactions from interleaving.
        self._write_lock = asyncio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(cls, address: Address) -> AsyncIterator[SqliteBackend]:
        """Open (creating and migrating if needed) the database file."""
        path = address.path
        assert path is not None
        if str(path) != ":memory:":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create {path.parent}: {exc.strerror}; set VOICES_DATABASE"
                ) from None
        try:
            # Tried first without aiosqlite: when its connect fails, its worker thread reports the
            # failure's clean-up to the event loop later, which may have closed by then (a CLI that
            # exits on the error), and a traceback follows the one-line error.
            await asyncio.to_thread(_try_open, address)
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}; set VOICES_DATABASE") from None
        conn.row_factory = sqlite3.Row
        try:
            await cls._prepare(conn, address)
            yield cls(conn, address)
        finally:
            await conn.close()

    @staticmethod
    async def _prepare(conn: aiosqlite.Connection, address: Address) -> None:
        try:
            refuse_newer(await schema_version(conn), address)
            await _run(conn, "PRAGMA journal_mode = WAL", ())
            await _run(conn, "PRAGMA foreign_keys = ON", ())
            # NORMAL is durable in WAL mode except for the last commits on power loss, not on a crash.
            await _run(conn, "PRAGMA synchronous = NORMAL", ())
            await _run(conn, "PRAGMA busy_timeout = 5000", ())
            await migrate(conn)
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):
                raise StoreError(
                    f"database {address} is read-only; make it writable or set VOICES_DATABASE"
                ) from None
            raise StoreError(
                f"database {address} is unreadable ({exc}); move it aside or set VOICES_DATABASE"
            ) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteWriter]:
        """Run the block as one write transaction (BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error)."""
        async with self._write_lock:
            writer = SqliteWriter(self._conn)
            try:
                try:
                    await writer.execute("BEGIN IMMEDIATE")
                    yield writer
                    await self._conn.commit()
                except BaseException:
                    # Also when cancelled (a lease keeper stopped mid-renewal): the BEGIN or the
                    # COMMIT may have run in aiosqlite's thread all the same, and a transaction left
                    # open would refuse every later one. The queue keeps order, so this ROLLBACK
                    # comes after them, and is nothing where nothing is open.
                    await asyncio.shield(self._conn.rollback())
                    raise
            except sqlite3.OperationalError as exc:
                raise self._unwritable(exc) from None

    async def write_one(self, sql: str, params: Params = ()) -> int:
        """SQLite makes a single statement atomic by itself, so it takes one trip to aiosqlite's
        thread where BEGIN … COMMIT takes three. It waits for the write lock all the same: run while
        another coroutine's transaction is open, it would become part of that transaction."""
        async with self._write_lock:
            try:
                return (await _run(self._conn, sql, params)).rowcount
            except sqlite3.OperationalError as exc:
                raise self._unwritable(exc) from None

    def _unwritable(self, exc: sqlite3.OperationalError) -> Exception:
        """Say in one line why a write failed, where a person can fix it; else the error as it is."""
        text, name = str(exc), self.address
        if "readonly" in text:
            return StoreError(f"database {name} is read-only; make it writable or set VOICES_DATABASE")
        if "locked" in text or "busy" in text:
            return StoreError(f"database {name} stayed locked by another process; try again")
        if "disk" in text or "full" in text:
            return StoreError(f"cannot write database {name} ({text}); free some disk space")
        return exc

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await _fetch(self._conn, sql, params)

    async def notify(self, topic: str, key: int) -> None:
        """One file has no channel between processes: watchers poll."""

    @asynccontextmanager
    async def watch(self, topic: str, key: int) -> AsyncIterator[asyncio.Event | None]:
        yield None
