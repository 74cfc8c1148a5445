"""The store on SQLite and PostgreSQL: turns committed per second, the cost of each, and rendering a
1,000-turn transcript (target ≤ 50 ms)."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench.harness import ms, postgres, spec
from bot.models import Turn, TurnStatus, Usage
from bot.store import Store
from bot.transcript import render_json, render_markdown

TEXT = "A reply of ordinary length, with a thought or two about fire and form. " * 12


async def measure_both(turns: int) -> list[dict[str, str]]:
    """Measure on a SQLite file, then on a throwaway PostgreSQL server where one is installed."""
    with tempfile.TemporaryDirectory() as folder:
        rows = [await measure(turns, Path(folder) / "bench.db", "SQLite (WAL)")]
    async with postgres() as server:
        if server is not None:
            rows.append(await measure(turns, await server.database(), "PostgreSQL 15 (loopback)"))
    return rows


async def measure(turns: int, where: str | Path, name: str) -> dict[str, str]:
    """Commit `turns` turns one by one, then render the dialogue both ways."""
    now = datetime.now(UTC)
    async with Store.open(where) as store:
        dialogue = await store.create_dialogue(spec(rounds=turns), now)
        started, cpu = time.monotonic(), time.process_time()
        for seq in range(turns):
            usage = Usage(1000 + seq, 300, 100, Decimal("0.0042"))
            await store.add_turn(
                Turn(
                    dialogue.id,
                    seq,
                    seq // 2 + 1,
                    seq % 2,
                    "",
                    TurnStatus.OK,
                    TEXT,
                    "",
                    usage,
                    Decimal("0.0042"),
                    "reported",
                    "m",
                    "stop",
                    900,
                    1,
                    now,
                    now,
                )
            )
        committed, cpu = time.monotonic() - started, time.process_time() - cpu
        dialogue = await store.get_dialogue(dialogue.id)
        loaded = await store.list_turns(dialogue.id)
        started = time.monotonic()
        render_markdown(dialogue, loaded)
        markdown = time.monotonic() - started
        started = time.monotonic()
        render_json(dialogue, loaded)
        as_json = time.monotonic() - started
    return {
        "database": name,
        "turns": str(turns),
        "turns committed/s": f"{turns / committed:.0f}",
        "per turn": ms(committed / turns),
        "Voices' CPU per turn": ms(cpu / turns),
        "render Markdown": ms(markdown),
        "render JSON": ms(as_json),
    }
