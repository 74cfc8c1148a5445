"""Where the database is (VOICES_DATABASE, read into an Address) and what the store asks of one.

The store's SQL is written once, in the subset SQLite and PostgreSQL share: parameters are `$1`,
`$2`, … (PostgreSQL's own; SQLite reads `$1` as a parameter named "1"), new ids come back through
RETURNING, and upserts are ON CONFLICT. A backend runs that SQL as it is; nothing rewrites it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from bot.errors import InputError

Params = Sequence[Any]

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class Address:
    """A database to open: a SQLite file, or a PostgreSQL server's URL."""

    kind: Literal["sqlite", "postgresql"]
    #: The SQLite file (kind "sqlite"); for PostgreSQL, None.
    path: Path | None = None
    #: The PostgreSQL URL, password and all: given to the driver, never shown (see `name`).
    url: str | None = None
    #: How a person names another database instead, the fix an error about this one ends with: the
    #: setting, or the argument of a command that names its own (`voices db copy SOURCE TARGET`).
    #: Not part of which database it is.
    elsewhere: str = field(default="set VOICES_DATABASE", compare=False)

    @property
    def name(self) -> str:
        """Say which database this is, fit for a log line or an error: no password, no query."""
        if self.path is not None:
            return str(self.path)
        parts = urlsplit(self.url or "")
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{user}{parts.hostname or 'localhost'}{port}{parts.path}"

    @property
    def password(self) -> str | None:
        """The PostgreSQL password in the URL, if any: a secret the logs mask."""
        return urlsplit(self.url).password if self.url else None

    def __str__(self) -> str:
        return self.name


def address(value: str | Path | Address, elsewhere: str | None = None) -> Address:
    """Read VOICES_DATABASE: a file path or sqlite:///path for SQLite, postgresql://… for PostgreSQL;
    `elsewhere` says how to name another, if not through the setting."""
    if elsewhere is not None:
        return replace(address(value), elsewhere=elsewhere)
    if isinstance(value, Address):
        return value
    if isinstance(value, Path):
        return Address("sqlite", path=value)
    text = value.strip()
    if text.startswith(SQLITE_PREFIX):
        # As SQLAlchemy reads it: sqlite:///data/v.db is relative, sqlite:////srv/v.db absolute.
        rest = text.removeprefix(SQLITE_PREFIX)
        if not rest:
            raise InputError("sqlite:/// names no file; write sqlite:///data/voices.db, say")
        return Address("sqlite", path=Path(rest))
    scheme, sep, _ = text.partition("://")
    if sep and scheme.lower() in POSTGRES_SCHEMES:
        try:
            urlsplit(text).port  # noqa: B018 - a port that is not a number raises here, not at connect
        except ValueError:
            raise InputError("the PostgreSQL URL has a port that is not a number") from None
        return Address("postgresql", url=text)
    if sep:
        raise InputError(
            f"Voices does not know databases of kind {scheme!r}; use a file path, "
            "sqlite:///path or postgresql://user@host/dbname"
        )
    if not text:
        raise InputError("the database is an empty name; give a file path or a postgresql:// URL")
    return Address("sqlite", path=Path(text))


class Row(Protocol):
    """A result row, by column name or position (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Writer(Protocol):
    """A connection inside one write transaction."""

    async def execute(self, sql: str, params: Params = ()) -> None:
        """Run one statement."""

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run one INSERT … RETURNING id and return the new row's id."""

    async def update(self, sql: str, params: Params = ()) -> int:
        """Run one UPDATE or DELETE; return how many rows it changed."""

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement for each row of parameters."""

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Return the rows of a query, read inside the transaction."""

    async def lock(self, key: int) -> None:
        """Hold the dialogue `key` until the transaction ends, against every other writer.

        Read-then-write steps (a lease's fence, a dialogue's running total) rely on it. SQLite has
        one writer at a time anyway; PostgreSQL takes an advisory lock on the key."""

    async def follow_ids(self, table: str) -> None:
        """Make the next id `table` hands out follow the largest one in it (after rows were
        copied in with their ids)."""


class Backend(Protocol):
    """One open database."""

    address: Address

    def transaction(self) -> AbstractAsyncContextManager[Writer]:
        """Run the block as one write transaction: committed at its end, rolled back on error."""

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Return the rows of one query, outside any transaction."""

    async def write_one(self, sql: str, params: Params = ()) -> int:
        """Run one write that stands alone (atomic by itself) and return how many rows it changed."""

    async def notify(self, topic: str, key: int) -> None:
        """Wake whoever watches `topic` for `key` in any process (PostgreSQL's NOTIFY). SQLite has
        no such signal: there, watchers look again on their own within their interval."""

    def watch(self, topic: str, key: int) -> AbstractAsyncContextManager[asyncio.Event | None]:
        """Yield an event set each time `topic` is notified for `key` (or for 0, "anyone"), while
        the block runs; None where the database has no signal to give (SQLite)."""
