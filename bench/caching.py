"""Prompt caching: what a 20-round dialogue costs with and without cache breakpoints, at
Anthropic-style prices (reads 0.1×, writes 1.25× the prompt price). Target: prompt cost −60 % or more.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from bench.harness import engine, run_dialogue, spec
from bot.budget import format_usd
from bot.models import Persona
from bot.plan import Tuning
from tests.fake_openrouter import MODELS, FakeOpenRouter

OPUS = "anthropic/claude-opus-4.6"
PRICES = {k: Decimal(v) for k, v in next(m for m in MODELS if m["id"] == OPUS)["pricing"].items()}


async def measure(rounds: int, words: int) -> dict[str, str]:
    """Run the same dialogue twice, with breakpoints and without, and compare what the prompts cost."""
    cached = await _run(rounds, words, caching=True)
    plain = await _run(rounds, words, caching=False)
    reduction = 1 - cached["prompt"] / plain["prompt"]
    return {
        "rounds": str(rounds),
        "words per reply": str(words),
        "prompt cost, no cache": format_usd(plain["prompt"]),
        "prompt cost, cached": format_usd(cached["prompt"]),
        "prompt cost reduction": f"{reduction:.1%}",
        "total cost, no cache → cached": f"{format_usd(plain['total'])} → {format_usd(cached['total'])}",
        "tokens read / written": f"{cached['read']} / {cached['written']}",
        # The saving Voices reports (per turn, from the catalogue's prices) is the measured difference.
        "reported saving = measured": str(cached["saving"] == plain["prompt"] - cached["prompt"]),
    }


async def _run(rounds: int, words: int, caching: bool) -> dict[str, Decimal]:
    async with FakeOpenRouter(default_words=words) as server:
        with tempfile.TemporaryDirectory() as folder:
            async with engine(Path(folder), server.base_url) as app:
                app.runner.tuning = Tuning() if caching else Tuning(cache_breakpoint_models=())
                base = spec(rounds, max_tokens=2 * words)
                personas = tuple(
                    replace(
                        Persona(name, OPUS, "You are one of two minds. Answer briefly."), max_tokens=2 * words
                    )
                    for name in ("Ada", "Basil")
                )
                dialogue = await app.runner.create(replace(base, participants=personas))
                await run_dialogue(app, dialogue.id)
                turns = await app.store.list_turns(dialogue.id)
    completion = sum(t.usage.completion_tokens for t in turns) * PRICES["completion"]
    total = sum((t.cost_usd for t in turns), Decimal(0))
    assert total == sum(server.reported_costs)
    return {
        "total": total,
        "prompt": total - completion,
        "read": Decimal(sum(t.usage.cached_tokens for t in turns)),
        "written": Decimal(sum(t.usage.cache_write_tokens for t in turns)),
        "saving": sum((t.cache_saving_usd for t in turns), Decimal(0)),
    }
