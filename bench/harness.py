"""What every benchmark shares: a fake OpenRouter in its own process, the real engine, and statistics."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.app import App, EngineConfig, open_app
from bot.database import address
from bot.models import DialogueSpec, Limits, Persona
from bot.plan import Tuning
from tests.postgres import PostgresServer, server_programs

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("anthropic/claude-opus-4.6", "z-ai/glm-5")


@dataclass
class Server:
    """The fake OpenRouter's address, and a way to read what it measured."""

    base_url: str

    def stats(self) -> dict[str, Any]:
        root = self.base_url.rsplit("/api/v1", 1)[0]
        with urllib.request.urlopen(f"{root}/_stats", timeout=30) as response:  # noqa: S310 - loopback
            return json.loads(response.read())


@asynccontextmanager
async def fake_server(delay: float, words: int) -> AsyncIterator[Server]:
    """Run tests/fake_openrouter.py in a process of its own, so its work is not counted as ours."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fake_openrouter",
        "--delay",
        str(delay),
        "--words",
        str(words),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    try:
        yield Server(line.decode().strip())
    finally:
        process.terminate()
        await process.wait()


@asynccontextmanager
async def engine(folder: Path, base_url: str, read_pace: float | None = None) -> AsyncIterator[App]:
    """Open the real engine on a fresh database, with limits that never bind before the rounds do;
    `read_pace` other than the engine's own, if given."""
    async with engine_on(folder / "bench.db", base_url, read_pace=read_pace) as app:
        yield app


@asynccontextmanager
async def engine_on(
    database: str | Path, base_url: str, tuning: Tuning | None = None, read_pace: float | None = None
) -> AsyncIterator[App]:
    """Open the real engine on a database (a SQLite file or a PostgreSQL URL)."""
    config = EngineConfig(
        database=address(database),
        base_url=base_url,
        api_key="sk-or-v1-" + "5f3a9c0e7b21d864" * 4,  # the shape of a real key: what the mask sees
        max_rounds=10_000,
        max_budget=Decimal(1_000),
        tuning=tuning or Tuning(),
    )
    if read_pace is not None:
        config = replace(config, read_pace=read_pace)
    async with open_app(config) as app:
        yield app


@asynccontextmanager
async def postgres() -> AsyncIterator[PostgresServer | None]:
    """Start a throwaway PostgreSQL server (as the tests do); None where none is installed."""
    programs = server_programs()
    if programs is None:
        yield None
        return
    server = PostgresServer(programs)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def worker_command(database: str, base_url: str, capacity: int, lease: float = 15.0) -> list[str]:
    """Return the command line of a headless worker (bench/worker.py)."""
    return [
        sys.executable, "-m", "bench.worker", "--database", database, "--base-url", base_url,
        "--capacity", str(capacity), "--lease", str(lease),
    ]  # fmt: skip


async def run_worker(database: str, base_url: str, capacity: int) -> dict[str, float]:
    """Run a headless worker until no dialogue is left; return what it reported."""
    process = await asyncio.create_subprocess_exec(
        *worker_command(database, base_url, capacity),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"a worker exited with {process.returncode}")
    report: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return report


def spec(rounds: int, max_tokens: int = 2000) -> DialogueSpec:
    """Return a two-model dialogue spec of `rounds` rounds."""
    personas = tuple(
        Persona(name=m.split("/")[1], model=m, system_prompt="Be brief.", max_tokens=max_tokens)
        for m in MODELS
    )
    return DialogueSpec(personas, "Let us begin.", Limits(rounds, Decimal(500)), origin="bench")


async def run_dialogue(app: App, dialogue_id: int) -> None:
    """Run a dialogue to its end, consuming its events as a quiet front end would."""
    async for _ in app.runner.run(dialogue_id):
        pass


async def run_later(delay: float, app: App, dialogue_id: int) -> None:
    """Run a dialogue as run_dialogue does, `delay` seconds from now (starts spread over time)."""
    await asyncio.sleep(delay)
    await run_dialogue(app, dialogue_id)


def pace(turns: int, wall: float, gaps: list[float]) -> dict[str, str]:
    """Return the figures every concurrency row has: turns, their rate, and the relay gaps."""
    return {
        "turns": str(turns),
        "turns/s": f"{turns / wall:.1f}",
        "relay gap p50": ms(percentile(gaps, 50)),
        "relay gap p99": ms(percentile(gaps, 99)),
    }


def percentile(values: list[float], p: float) -> float:
    """Return the p-th percentile (0–100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def gaps_and_streams(stats: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Split the server's timings into relay gaps (end of a reply to the next request of the same
    dialogue) and stream times (request to the end of its reply)."""
    by_dialogue: dict[str, list[tuple[float, float]]] = {}
    for received, finished, session in stats["requests"]:
        dialogue = session.rsplit("-", 1)[0]
        by_dialogue.setdefault(dialogue, []).append((received, finished))
    gaps, streams = [], []
    for timings in by_dialogue.values():
        timings.sort()
        streams += [end - start for start, end in timings]
        gaps += [timings[i + 1][0] - timings[i][1] for i in range(len(timings) - 1)]
    return gaps, streams


class Collections:
    """What the garbage collector took while watched: seconds in all, and its longest pause."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest = 0.0
        self._began = 0.0

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began:
            pause = time.perf_counter() - self._began
            self.seconds += pause
            self.longest = max(self.longest, pause)


def rss_bytes() -> int:
    """Return this process's resident memory."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def against_floor(costs: dict[str, list[float]]) -> list[tuple[str, float, str, str]]:
    """For readers measured in turn (the first is the floor), return each one's name, median cost
    in seconds, that cost in µs with its range over the runs, and its ratio to the floor's."""
    least = statistics.median(next(iter(costs.values())))
    shown = []
    for name, found in costs.items():
        cost = statistics.median(found)
        spread = f" ({min(found) * 1e6:.0f}–{max(found) * 1e6:.0f})" if len(found) > 1 else ""
        shown.append((name, cost, f"{cost * 1e6:.0f} µs{spread}", f"{cost / least:.1f}"))
    return shown
