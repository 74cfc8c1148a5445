"""The PostgreSQL backend: a pool of asyncpg connections to a database many processes share.

Reached through `voices[postgres]` (asyncpg). The store's SQL runs as it is written. A write
transaction is READ COMMITTED, PostgreSQL's default; the steps that read a dialogue and then write
from what they read take an advisory lock on it (Writer.lock), so two processes cannot interleave
them, and SQLite's one-writer guarantee holds here dialogue by dialogue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from bot.database import Address, Params, Row
from bot.errors import Duplicate, StoreError
from bot.migrations import (
    POSTGRES_BASELINE,
    POSTGRES_MIGRATIONS,
    POSTGRES_SCHEMA,
    SCHEMA_VERSION,
    refuse_newer,
)

log = logging.getLogger(__name__)

#: The advisory lock key that lets one process at a time migrate (dialogue ids are positive).
MIGRATION_LOCK = -1
#: Connections each process keeps: dialogues share them, one per statement or transaction.
POOL_SIZE = 10


def _changed(status: str) -> int:
    """Return the row count in a command tag such as "UPDATE 3" or "INSERT 0 1"."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresWriter:
    """A pooled connection inside a transaction."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy[Any]):
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> None:
        with _duplicates():
            await self._conn.execute(sql, *params)

    async def insert(self, sql: str, params: Params = ()) -> int:
        with _duplicates():
            return int(await self._conn.fetchval(sql, *params))

    async def update(self, sql: str, params: Params = ()) -> int:
        return _changed(await self._conn.execute(sql, *params))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with _duplicates():
            await self._conn.executemany(sql, [tuple(row) for row in rows])

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._conn.fetch(sql, *params))

    async def lock(self, key: int) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", key)

    async def follow_ids(self, table: str) -> None:
        # An identity column counts on from its sequence, which rows inserted with ids never moved.
        await self._conn.execute(
            f"SELECT setval(pg_get_serial_sequence($1, 'id'), max(id)) FROM {table} "
            "HAVING max(id) IS NOT NULL",
            table,
        )


class PostgresBackend:
    """A PostgreSQL database. Open it with `async with PostgresBackend.open(address)`."""

    def __init__(self, pool: asyncpg.Pool[Any], address: Address):
        self._pool = pool
        self.address = address
        # One connection of its own LISTENs for every watcher in this process, opened at the first.
        self._listener: asyncpg.Connection[Any] | None = None
        self._channels: set[str] = set()
        self._listen_lock = asyncio.Lock()
        self._watchers: dict[tuple[str, int], set[asyncio.Event]] = {}

    @classmethod
    @asynccontextmanager
    async def open(cls, address: Address) -> AsyncIterator[PostgresBackend]:
        """Connect, create the schema on an empty database, and apply what migrations it lacks."""
        try:
            pool = await asyncpg.create_pool(address.url, min_size=1, max_size=POOL_SIZE)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The driver's words, never the URL: it may carry a password.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(
                f"cannot open database {address} ({reason}); check that the server runs, "
                f"or {address.elsewhere}"
            ) from None
        backend = None
        try:
            async with pool.acquire() as conn:
                await _migrate(conn, address)
            backend = cls(pool, address)
            yield backend
        finally:
            if backend is not None and backend._listener is not None:
                await backend._listener.close()
            await pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresWriter]:
        with self._errors():
            async with self._pool.acquire() as conn, conn.transaction():
                yield PostgresWriter(conn)

    async def write_one(self, sql: str, params: Params = ()) -> int:
        """One statement is a transaction of its own in PostgreSQL."""
        with self._errors():
            return _changed(await self._pool.execute(sql, *params))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with self._errors():
            return list(await self._pool.fetch(sql, *params))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Name a lost server in one line (the pool connects afresh on the next step, so what
        failed can be tried again), and a duplicate key as such."""
        try:
            with _duplicates():
                yield
        except _LOST as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(
                f"lost the connection to database {self.address} ({reason}); check that the server runs"
            ) from None

    async def notify(self, topic: str, key: int) -> None:
        await self._pool.execute("SELECT pg_notify($1, $2)", _channel(topic), str(key))

    @asynccontextmanager
    async def watch(self, topic: str, key: int) -> AsyncIterator[asyncio.Event | None]:
        channel, event = _channel(topic), asyncio.Event()
        watchers = self._watchers.setdefault((channel, key), set())
        watchers.add(event)
        try:
            try:
                await self._listen(channel)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Not fatal: the watcher still looks on its own interval, as on SQLite.
                log.warning("cannot listen on %s (%s); looking every interval instead", self.address, exc)
            yield event
        finally:
            watchers.discard(event)
            if not watchers:
                del self._watchers[(channel, key)]

    async def _listen(self, channel: str) -> None:
        async with self._listen_lock:
            if self._listener is None or self._listener.is_closed():
                self._listener = await asyncpg.connect(self.address.url)
                self._channels.clear()
            if channel not in self._channels:
                await self._listener.add_listener(channel, self._heard)
                self._channels.add(channel)

    def _heard(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        """Wake the watchers of the key notified, and those of every key (0)."""
        key = int(str(payload)) if str(payload).isdigit() else 0
        for wanted in {key, 0}:
            for event in self._watchers.get((channel, wanted), ()):
                event.set()


#: What asyncpg raises when the server went away under a connection: refused or reset, closed,
#: shut down, or (a connection terminated mid-reply) its protocol left in a state it cannot leave.
_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
)


@contextmanager
def _duplicates() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Duplicate(str(exc)) from None


def _channel(topic: str) -> str:
    return f"voices_{topic}"


async def schema_version(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> int:
    """Return the version recorded in the database (0: an empty one)."""
    exists = await conn.fetchval("SELECT to_regclass('voices_schema') IS NOT NULL")
    return int(await conn.fetchval("SELECT version FROM voices_schema")) if exists else 0


async def _migrate(conn: asyncpg.pool.PoolConnectionProxy[Any], address: Address) -> None:
    """Bring the schema to this Voices' version, one process at a time (the others wait)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        version = await schema_version(conn)
        refuse_newer(version, address)
        if version == 0:
            async with conn.transaction():
                await conn.execute(POSTGRES_SCHEMA)
                await conn.execute("CREATE TABLE voices_schema (version BIGINT NOT NULL)")
                await conn.execute("INSERT INTO voices_schema VALUES ($1)", POSTGRES_BASELINE)
            version = POSTGRES_BASELINE
        for number in range(version + 1, SCHEMA_VERSION + 1):
            async with conn.transaction():
                await conn.execute(POSTGRES_MIGRATIONS[number])
                await conn.execute("UPDATE voices_schema SET version = $1", number)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
