"""The SQLite backend: a database file in WAL mode with foreign keys on, one writer at a time.

Two connections. The statements of a running engine are short and indexed: they run on the event
loop's own connection, where a statement costs microseconds and a trip to a worker thread costs
more than the statement (a dialogue turn took 3.5 ms of CPU through aiosqlite's thread and 1.4 ms
without it; docs/benchmarks.md §9). The longest, reading a whole transcript back (5 ms for 1,000
turns), holds the loop half as long as building the turns from its rows did already. What may wait
goes to aiosqlite's thread: opening and migrating (which waits for another process's migration),
and checkpoints of the write-ahead log (which flush to disk). Where another process holds the write
lock, a statement on the loop's connection gives the loop back and tries again rather than blocking
it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from bot.database import Address, Params, Row
from bot.errors import Duplicate, StoreError
from bot.migrations import MIGRATIONS, refuse_newer

log = logging.getLogger(__name__)

#: How long a statement waits for another process's write before it says the database is locked.
BUSY_SECONDS = 5.0
#: Commits between checkpoints. SQLite's own (every 1,000 pages) would flush to disk inside a commit,
#: on the event loop; these run in aiosqlite's thread instead.
CHECKPOINT_EVERY = 500


def _named(params: Params) -> dict[str, Any]:
    """Bind `$1`, `$2`, … by name: SQLite reads `$1` as the parameter "1". (Positional binding of
    named parameters is deprecated from Python 3.12.)"""
    return {str(number): value for number, value in enumerate(params, 1)}


def _named_error(exc: sqlite3.IntegrityError) -> Exception:
    """Name a duplicate key as such (as the PostgreSQL backend does), and let other errors be.
    Called from `except` clauses: a context manager around every statement cost more than the
    rest of the statement's Python."""
    return Duplicate(str(exc)) if "UNIQUE" in str(exc) else exc


async def _run(conn: aiosqlite.Connection, sql: str) -> list[Row]:
    """Run one statement on aiosqlite's connection (the schema, PRAGMAs, checkpoints) in one trip,
    reading its rows to the end: a statement left "in progress" (say, the row PRAGMA journal_mode
    returns) would block COMMIT."""
    return list(await conn.execute_fetchall(sql))


async def schema_version(conn: aiosqlite.Connection) -> int:
    """Return the version recorded in the database file."""
    rows = await _run(conn, "PRAGMA user_version")
    return int(rows[0][0]) if rows else 0


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every migration above the file's version, each in its own transaction; return the new version."""
    version = await schema_version(conn)
    for number, (_reason, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript would commit on its own; run the statements inside one explicit transaction
        # so a failed migration leaves the file at the version before it.
        await _run(conn, "BEGIN")
        try:
            for statement in _statements(sql):
                await _run(conn, statement)
            await _run(conn, f"PRAGMA user_version = {number}")
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
    return await schema_version(conn)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Statements:
    """The event loop's own connection: each statement runs at once, in the loop's thread."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    async def cursor(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        """Run one statement. While another process writes, give the loop back between tries, up to
        BUSY_SECONDS (the connection's own busy timeout is 0: it would wait inside the loop)."""
        named, pause, waited = _named(params), 0.001, 0.0
        while True:
            try:
                return self.db.execute(sql, named)
            except sqlite3.IntegrityError as exc:
                raise _named_error(exc) from None
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or waited >= BUSY_SECONDS:
                    raise
            await asyncio.sleep(pause)
            waited, pause = waited + pause, min(pause * 2, 0.05)

    async def run(self, sql: str, params: Params = ()) -> int:
        """Run a statement that returns no rows; return how many rows it changed."""
        cursor = await self.cursor(sql, params)
        if cursor.description is not None:
            cursor.close()
        return cursor.rowcount

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self.cursor(sql, params)
        try:
            return cursor.fetchall()
        except sqlite3.IntegrityError as exc:
            raise _named_error(exc) from None


class SqliteWriter:
    """The connection inside a transaction."""

    def __init__(self, statements: Statements):
        self._statements = statements

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._statements.run(sql, params)

    async def insert(self, sql: str, params: Params = ()) -> int:
        rows = await self._statements.fetch(sql, params)
        return int(rows[0][0])

    async def update(self, sql: str, params: Params = ()) -> int:
        return await self._statements.run(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            self._statements.db.executemany(sql, [_named(row) for row in rows])
        except sqlite3.IntegrityError as exc:
            raise _named_error(exc) from None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._statements.fetch(sql, params)

    async def lock(self, key: int) -> None:
        """Nothing to do: BEGIN IMMEDIATE already made this the only writer."""

    async def follow_ids(self, table: str) -> None:
        """Nothing to do: an INTEGER PRIMARY KEY is always one past the largest."""


def _try_open(address: Address) -> None:
    sqlite3.connect(_target(address)).close()


def _target(address: Address) -> str:
    """Where both connections open: the file, or one in-memory database they share."""
    path = address.path
    return "file:voices?mode=memory&cache=shared" if path is None or str(path) == ":memory:" else str(path)


def _loop_connection(address: Address) -> sqlite3.Connection:
    """Open the event loop's connection: per-connection settings as the migrating one has them,
    but no busy timeout and no checkpoints of its own, since both would wait inside the loop."""
    target = _target(address)
    db = sqlite3.connect(target, isolation_level=None, uri=target.startswith("file:"))
    db.row_factory = sqlite3.Row
    for pragma in ("foreign_keys = ON", "synchronous = NORMAL", "busy_timeout = 0", "wal_autocheckpoint = 0"):
        db.execute(f"PRAGMA {pragma}").close()
    return db


class SqliteBackend:
    """A SQLite database file. Open it with `async with SqliteBackend.open(address)`."""

    def __init__(self, db: sqlite3.Connection, side: aiosqlite.Connection, address: Address):
        self._conn = db
        self._statements = Statements(db)
        self._side = side
        self.address = address
        # One connection is shared by every task; this keeps their transactions from interleaving.
        self._write_lock = asyncio.Lock()
        self._commits = 0  # commits so far, and at the last checkpoint's start
        self._checked = 0
        self._checkpoint: asyncio.Task[None] | None = None

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
                    f"cannot create {path.parent}: {exc.strerror}; {address.elsewhere}"
                ) from None
        target = _target(address)
        try:
            # Tried first without aiosqlite: when its connect fails, its worker thread reports the
            # failure's clean-up to the event loop later, which may have closed by then (a CLI that
            # exits on the error), and a traceback follows the one-line error.
            await asyncio.to_thread(_try_open, address)
            side = await aiosqlite.connect(target, isolation_level=None, uri=target.startswith("file:"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}; {address.elsewhere}") from None
        side.row_factory = sqlite3.Row
        try:
            await cls._prepare(side, address)
            try:
                db = _loop_connection(address)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open database {path}: {exc}; {address.elsewhere}") from None
            backend = cls(db, side, address)
            try:
                yield backend
            finally:
                await backend._close()
        finally:
            await side.close()

    @staticmethod
    async def _prepare(conn: aiosqlite.Connection, address: Address) -> None:
        try:
            refuse_newer(await schema_version(conn), address)
            await _run(conn, "PRAGMA journal_mode = WAL")
            await _run(conn, "PRAGMA foreign_keys = ON")
            # NORMAL is durable in WAL mode except for the last commits on power loss, not on a crash.
            await _run(conn, "PRAGMA synchronous = NORMAL")
            await _run(conn, "PRAGMA busy_timeout = 5000")
            await migrate(conn)
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):
                raise StoreError(
                    f"database {address} is read-only; make it writable or {address.elsewhere}"
                ) from None
            raise StoreError(
                f"database {address} is unreadable ({exc}); move it aside or {address.elsewhere}"
            ) from None

    async def _close(self) -> None:
        if self._checkpoint is not None:
            await asyncio.shield(self._checkpoint)
        self._conn.close()  # the last connection to close checkpoints and removes the log

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteWriter]:
        """Run the block as one write transaction (BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error)."""
        async with self._write_lock:
            try:
                await self._statements.run("BEGIN IMMEDIATE")
                try:
                    yield SqliteWriter(self._statements)
                    self._conn.commit()
                except BaseException:
                    self._conn.rollback()  # also when cancelled: nothing may stay open
                    raise
            except sqlite3.OperationalError as exc:
                raise self._unwritable(exc) from None
        self._committed()

    async def write_one(self, sql: str, params: Params = ()) -> int:
        """SQLite makes a single statement atomic by itself, without BEGIN … COMMIT. It waits for the
        write lock all the same: run while another coroutine's transaction is open, it would become
        part of that transaction."""
        async with self._write_lock:
            try:
                changed = await self._statements.run(sql, params)
            except sqlite3.OperationalError as exc:
                raise self._unwritable(exc) from None
        self._committed()
        return changed

    def _committed(self) -> None:
        """Count a commit, and every CHECKPOINT_EVERY start a checkpoint in aiosqlite's thread."""
        self._commits += 1
        if self._commits - self._checked >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._checked = self._commits
            self._checkpoint = asyncio.get_running_loop().create_task(self._check_point())

    async def _check_point(self) -> None:
        try:
            # PASSIVE copies what no reader still needs and never waits for one. The bulk is copied
            # (and flushed to disk) while writes go on; then the few pages they added, with this
            # process's writes held back (in the loop, not blocking it), since the log starts again
            # from its beginning only at a write that finds all of it copied.
            commits = self._commits
            await _run(self._side, "PRAGMA wal_checkpoint(PASSIVE)")
            if self._commits != commits:
                async with self._write_lock:
                    await _run(self._side, "PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one tries again; the log only grows meanwhile
            log.warning("checkpoint of %s failed: %s", self.address, exc)
        finally:
            self._checkpoint = None

    def _unwritable(self, exc: sqlite3.OperationalError) -> Exception:
        """Say in one line why a write failed, where a person can fix it; else the error as it is."""
        text, name = str(exc), self.address
        if "readonly" in text:
            return StoreError(f"database {name} is read-only; make it writable or {name.elsewhere}")
        if "locked" in text or "busy" in text:
            return StoreError(f"database {name} stayed locked by another process; try again")
        if "disk" in text or "full" in text:
            return StoreError(f"cannot write database {name} ({text}); free some disk space")
        return exc

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._statements.fetch(sql, params)

    async def notify(self, topic: str, key: int) -> None:
        """One file has no channel between processes: watchers poll."""

    @asynccontextmanager
    async def watch(self, topic: str, key: int) -> AsyncIterator[asyncio.Event | None]:
        yield None
