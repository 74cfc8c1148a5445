"""Concurrency: many dialogues at once in one process, against one fake OpenRouter.

Reports turns per second, the relay gap p50/p99 (target p99 ≤ 100 ms at 1,000), CPU seconds per
turn, and resident memory per dialogue beyond its text (target ≤ 200 KB).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.harness import engine, fake_server, gaps_and_streams, ms, percentile, rss_bytes, run_dialogue, spec


async def measure(dialogues: int, rounds: int, tokens_per_second: float, words: int) -> dict[str, str]:
    """Run `dialogues` dialogues side by side and return the figures."""
    async with fake_server(1 / tokens_per_second, words) as server:
        with tempfile.TemporaryDirectory() as folder:
            async with engine(Path(folder), server.base_url) as app:
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
                await asyncio.gather(*(run_dialogue(app, i) for i in ids))
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
        "turns": str(turns),
        "turns/s": f"{turns / wall:.1f}",
        "relay gap p50": ms(percentile(gaps, 50)),
        "relay gap p99": ms(percentile(gaps, 99)),
        "CPU per turn": ms(cpu / turns),
        "memory per dialogue": f"{memory / 1024:.0f} KB",
    }
