"""Backups of a live SQLite database (through SQLite's online backup API) and checks that a file is a
whole Voices database.

A file copy of a database being written can catch a transaction half-way, or miss what still sits
in the write-ahead log. The backup API copies the pages of one consistent snapshot, while dialogues
go on writing; the copy is then a single self-contained file (no -wal beside it), checked before
it takes its name.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bot.database import Address
from bot.errors import InputError
from bot.migrations import SCHEMA_VERSION
from bot.text import counted


@dataclass(frozen=True, slots=True)
class Health:
    """What a check found: the schema version, what the file holds, and anything wrong."""

    path: Path
    schema: int
    dialogues: int
    turns: int
    problems: tuple[str, ...] = ()
    #: Whether the file could be read as a Voices database at all (else the counts mean nothing).
    readable: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """Return the finding in one line."""
        held = f"schema {self.schema}, {counted(self.dialogues, 'dialogue')}, {counted(self.turns, 'turn')}"
        if self.ok:
            return f"{self.path}: ok ({held})"
        return f"{self.path}: {'; '.join(self.problems)}" + (f" ({held})" if self.readable else "")


def back_up(source: Path, target: Path) -> Health:
    """Copy the database at `source` to `target` as one consistent snapshot, check the copy, and
    return what it holds; `target` appears only once it is whole and checked."""
    try:
        return _back_up(source, target)
    except OSError as exc:  # a path the file system refuses (too long, say) before any copying
        raise InputError(f"cannot write {target}: {exc.strerror}; choose another path") from None


def landing(path: Path) -> tuple[Path, Path]:
    """Return the file a write to `path` replaces (through a symbolic link, which stays one) and the
    partial file beside it that is written first and renamed into its place, so that a reader
    finds the old file or the whole new one, never half."""
    target = Path(os.path.realpath(path))
    return target, target.with_name(f".{target.name}.partial")


def _back_up(source: Path, target: Path) -> Health:
    if not source.is_file():
        raise InputError(f"no database at {source}; set VOICES_DATABASE or give the right path")
    if target.exists() and target.resolve() == source.resolve():
        raise InputError(f"{target} is the database itself; give the backup another path")
    if target.is_dir():
        raise InputError(f"{target} is a folder; give a file path for the backup")
    if target.exists() and not target.is_file():
        # A device or a pipe: the copy is renamed into place, which would put a file where it was.
        raise InputError(f"{target} is not a file (a device or a pipe); give a file path for the backup")
    given, (target, partial) = target, landing(target)
    if target.with_name(f"{target.name}-wal").exists():
        # An earlier backup is replaced, as a nightly one should be; a database that something has
        # open (its write-ahead log beside it) is another process's data, not a backup.
        raise InputError(
            f"{given} is a database in use ({given}-wal is beside it); give the backup another path"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        # SQLite names neither file when it cannot open one; a target we cannot write fails here,
        # named as the backup's, not blamed on the database being copied.
        partial.open("xb").close()
        live = _connect(source, read_only=True)
        try:
            copy = sqlite3.connect(partial)
            try:
                live.backup(copy)  # every page in one step: one snapshot, while writers go on
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                copy.close()
        finally:
            live.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise InputError(f"cannot back up {source}: {exc}") from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InputError(f"cannot write {given}: {exc.strerror}; choose another path") from None
    health = check(partial)
    if not health.ok:
        partial.unlink(missing_ok=True)
        raise InputError(f"the backup of {source} failed its check: {'; '.join(health.problems)}")
    os.replace(partial, target)
    return Health(given, health.schema, health.dialogues, health.turns)


def check(path: Path) -> Health:
    """Return whether the file at `path` is a whole Voices database: SQLite's integrity and foreign
    key checks, and a schema this Voices can open."""
    try:
        found = path.is_file()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if not found:
        raise InputError(f"no database at {path}; give the path of a Voices database")
    try:
        conn = _connect(path, read_only=True)
        try:
            problems = []
            integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if integrity != ["ok"]:
                problems.append(f"integrity check failed: {'; '.join(integrity[:3])}")
            if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                problems.append("rows refer to rows that are missing (foreign key check)")
            schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"dialogues", "turns"} <= tables:
                why = "not a Voices database (no dialogues or turns table)"
                return Health(path, schema, 0, 0, (why,), readable=False)
            if schema > SCHEMA_VERSION:
                problems.append(f"schema {schema} is newer than this Voices knows ({SCHEMA_VERSION})")
            dialogues = int(conn.execute("SELECT count(*) FROM dialogues").fetchone()[0])
            turns = int(conn.execute("SELECT count(*) FROM turns").fetchone()[0])
            return Health(path, schema, dialogues, turns, tuple(problems))
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return Health(path, 0, 0, 0, (f"not a readable SQLite database ({exc})",), readable=False)


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    mode = "ro" if read_only else "rwc"
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def sqlite_file(database: Address, command: str) -> Path:
    """Return the SQLite file `command` works on, or say in one line that PostgreSQL has its own."""
    if database.path is None:
        raise InputError(
            f"`{command}` works on a SQLite file, and VOICES_DATABASE is PostgreSQL ({database}); "
            "use pg_dump, or give the file's path"
        )
    return database.path
