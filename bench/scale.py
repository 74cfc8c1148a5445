"""Concurrency: many dialogues at once in one process, or spread over worker processes on
PostgreSQL, against one fake OpenRouter.

Reports turns per second, the relay gap p50/p99 (target p99 ≤ 100 ms), CPU seconds per turn and
how much of it went to collecting garbage (with the longest pause), and resident memory per
dialogue beyond its text (target ≤ 200 KB at 1,000).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import (
    Collections,
    engine,
    engine_on,
    fake_server,
    gaps_and_streams,
    ms,
    pace,
    rss_bytes,
    run_later,
    run_worker,
    spec,
)
from config import DISCORD_READ_PACE


async def measure(
    dialogues: int,
    rounds: int,
    tokens_per_second: float,
    words: int,
    spread: float = 0.0,
    read_pace: float = DISCORD_READ_PACE,
) -> dict[str, str]:
    """Run `dialogues` dialogues side by side and return the figures. With `spread`, their starts
    are spread evenly over that many seconds rather than all at once (then, streaming at one pace,
    they all end their turns together). Streams are read every `read_pace` seconds: by default the
    bot's pace, since the bot is where many dialogues share a process."""
    async with fake_server(1 / tokens_per_second, words) as server:
        with tempfile.TemporaryDirectory() as folder:
            async with engine(Path(folder), server.base_url, read_pace) as app:
                ids = [(await app.runner.create(spec(rounds))).id for _ in range(dialogues)]
                baseline, peak = rss_bytes(), 0
                sampling = True

                async def sample() -> None:
                    nonlocal peak
                    while sampling:
                        peak = max(peak, rss_bytes())
                        await asyncio.sleep(0.05)

                sampler = asyncio.create_task(sample())
                cpu, started = time.process_time(), time.monotonic()
                with Collections() as collections:
                    await asyncio.gather(
                        *(run_later(spread * n / dialogues, app, i) for n, i in enumerate(ids))
                    )
                wall, cpu = time.monotonic() - started, time.process_time() - cpu
                sampling = False
                await sampler
                text = 0
                for dialogue_id in ids:
                    text += sum(len(t.text.encode()) for t in await app.store.list_turns(dialogue_id))
        stats = server.stats()
    gaps, _ = gaps_and_streams(stats)
    turns = len(stats["requests"])
    memory = max(0, peak - baseline - text) / dialogues
    return {
        "dialogues": str(dialogues),
        **pace(turns, wall, gaps),
        "CPU per turn": ms(cpu / turns),
        "of it collecting garbage": ms(collections.seconds / turns),
        "longest collection": ms(collections.longest),
        "memory per dialogue": f"{memory / 1024:.0f} KB",
    }


async def measure_workers(
    database: str,
    processes: int,
    dialogues: int,
    rounds: int,
    tokens_per_second: float,
    words: int,
    database_cpu: Callable[[], float],
) -> dict[str, str]:
    """Run `dialogues` dialogues on `processes` headless workers (bench/worker.py) sharing one
    PostgreSQL database, each taking an equal share, and return the figures. The fake provider
    and the database server run on the same cores; their shares of the CPU are reported."""
    async with fake_server(1 / tokens_per_second, words) as server:
        async with engine_on(database, server.base_url) as app:
            for _ in range(dialogues):
                await app.store.hand_over((await app.runner.create(spec(rounds))).id)
        provider_cpu, db_cpu = server.stats()["cpu"], database_cpu()
        share = -(-dialogues // processes)
        started = time.monotonic()
        reports = await asyncio.gather(
            *(run_worker(database, server.base_url, share) for _ in range(processes))
        )
        wall = time.monotonic() - started
        stats, db_cpu = server.stats(), database_cpu() - db_cpu
    gaps, _ = gaps_and_streams(stats)
    turns = len(stats["requests"])
    workers_cpu = sum(r["cpu"] for r in reports)
    provider_cpu = stats["cpu"] - provider_cpu
    every = workers_cpu + provider_cpu + db_cpu
    return {
        "worker processes": str(processes),
        "dialogues": str(dialogues),
        **pace(turns, wall, gaps),
        "workers' CPU per turn": ms(workers_cpu / turns),
        "CPU used (of 2 cores × wall)": f"{every / wall:.2f} cores",
        "workers' share": f"{workers_cpu / every:.0%}",
        "provider's share": f"{provider_cpu / every:.0%}",
        "PostgreSQL's share": f"{db_cpu / every:.0%}",
    }
