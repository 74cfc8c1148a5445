"""Relay overhead: one dialogue against a model streaming at a fixed rate.

Overhead = the dialogue's wall time / the sum of the model's own stream times (target ≤ 1.02), and
the gap between the end of one reply and the next request (target p99 ≤ 20 ms), without Discord.
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from pathlib import Path

from bench.harness import engine, fake_server, gaps_and_streams, ms, percentile, run_dialogue, spec


async def measure(rounds: int, tokens_per_second: float, words: int) -> dict[str, str]:
    """Run one dialogue and return its figures."""
    async with fake_server(1 / tokens_per_second, words) as server:
        with tempfile.TemporaryDirectory() as folder:
            async with engine(Path(folder), server.base_url) as app:
                dialogue = await app.runner.create(spec(rounds))
                started = time.monotonic()
                await run_dialogue(app, dialogue.id)
                wall = time.monotonic() - started
                turns = await app.store.list_turns(dialogue.id)
                recorded = sum((t.cost_usd for t in turns), Decimal(0))
        stats = server.stats()
    gaps, streams = gaps_and_streams(stats)
    reported = Decimal(stats["reported_cost_sum"])
    return {
        "turns": str(len(turns)),
        "wall time": f"{wall:.2f} s",
        "model stream time": f"{sum(streams):.2f} s",
        "overhead (wall / stream)": f"{wall / sum(streams):.4f}",
        "relay gap p50": ms(percentile(gaps, 50)),
        "relay gap p99": ms(percentile(gaps, 99)),
        "cost in transcript = cost reported": f"{recorded == reported} (${recorded} vs ${reported})",
    }
