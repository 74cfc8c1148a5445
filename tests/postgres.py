"""A throwaway PostgreSQL server for the tests: initdb in a temporary folder, started on a free
loopback port, one fresh database per test, stopped and removed at the end.

The server programs are where Debian's postgresql-15 puts them (/usr/lib/postgresql/N/bin), not on
PATH. initdb refuses to run as root, so as root (CI) the server runs as the `postgres` user the
package creates, or else as `nobody`.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from glob import glob
from pathlib import Path

import asyncpg

ADMIN = "voices"


def server_programs() -> Path | None:
    """Return the folder of initdb and pg_ctl, newest PostgreSQL first; None if none is installed."""
    for found in sorted(glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(found).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _runner() -> str | None:
    """Return the user to run the server as, when this process is root; None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, with neither a postgres nor a nobody user to run PostgreSQL as")


def _stat(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces; what follows its closing parenthesis does not.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _parent(pid: int) -> int:
    try:
        return int(_stat(pid)[1])
    except (OSError, ValueError, IndexError):
        return -1


def _cpu_ticks(pid: int, children: bool) -> int:
    try:
        fields = _stat(pid)
    except OSError:
        return 0
    # utime, stime, cutime, cstime are fields 14-17 of the whole line: 11-14 after the name.
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if children else 0)


class PostgresServer:
    """One running server; `database()` makes a fresh, empty database on it and returns its URL."""

    def __init__(self, programs: Path):
        self._programs = programs
        self._user = _runner()
        self.folder = Path(tempfile.mkdtemp(prefix="voices-pg-"))
        self.port = _free_port()
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self._user, cwd=self.folder)

    def start(self) -> None:
        if self._user is not None:
            shutil.chown(self.folder, self._user)
        data = self.folder / "data"
        self._run(
            str(self._programs / "initdb"), "-D", str(data), "-U", ADMIN, "--auth=trust",
            "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        # Durability off: a test server that crashes is thrown away anyway.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self._programs / "pg_ctl"), "-D", str(data), "-o", options, "-l",
            str(self.folder / "server.log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(
                str(self._programs / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"
            )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """Return the CPU the server has used: its postmaster, the backends running now, and
        those that ended (Linux counts a reaped child's time in its parent's)."""
        pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        total = _cpu_ticks(pid, children=True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent(int(entry.name)) == pid:
                total += _cpu_ticks(int(entry.name), children=True)
        return total / ticks

    def url(self, name: str, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{ADMIN}{secret}@127.0.0.1:{self.port}/{name}"

    async def database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.url(name)
