"""The local model: tokens per second of the packaged Gemma 3 on this machine, and the relay around it.

Overhead = the dialogue's wall time / the time spent inside model calls.
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from pathlib import Path

from bench.harness import engine, run_dialogue
from bot.models import DialogueSpec, Limits, Persona
from bot.providers.local import local_available


async def measure(rounds: int, max_tokens: int) -> dict[str, str]:
    """Run a dialogue between two local personas and return its figures."""
    if not local_available():
        return {"skipped": "the voices[local] extra is not installed"}
    personas = tuple(
        Persona(name, "local:default", f"You are {name}. Be brief.", temperature=0.8, max_tokens=max_tokens)
        for name in ("Ada", "Basil")
    )
    spec = DialogueSpec(personas, "What is fire?", Limits(rounds, Decimal(1)), origin="bench")
    with tempfile.TemporaryDirectory() as folder:
        async with engine(Path(folder), "http://127.0.0.1:9/api/v1") as app:
            dialogue = await app.runner.create(spec)  # loads the model once, before the clock starts
            started = time.monotonic()
            await run_dialogue(app, dialogue.id)
            wall = time.monotonic() - started
            turns = await app.store.list_turns(dialogue.id)
    in_calls = sum(t.latency_ms for t in turns) / 1000
    tokens = sum(t.usage.completion_tokens for t in turns)
    return {
        "turns": str(len(turns)),
        "completion tokens": str(tokens),
        "tokens/s (in calls)": f"{tokens / in_calls:.1f}",
        "overhead (wall / in calls)": f"{wall / in_calls:.4f}",
        "cost": f"${sum((t.cost_usd for t in turns), Decimal(0))}",
    }
