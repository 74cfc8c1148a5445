"""What Voices exports to Prometheus stays bounded whatever a provider says: the model a turn is
counted under is the one the provider named, and a provider that names a new one for every call
must not grow the registry, and every scrape, turn after turn."""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal

from bot.events import TurnFinished
from bot.metrics import MAX_MODELS, OTHER, Metrics
from tests.bot.test_store import a_turn


def test_made_up_model_names_are_counted_together_past_a_bound_and_nothing_is_lost():
    metrics = Metrics()
    for n in range(1000):
        turn = replace(a_turn(1, n, cost="0.001"), model_used=f"made-up/model-{n}")
        metrics.observe(1, TurnFinished(turn, Decimal(0)))
    text = metrics.exposition().decode()
    counted = dict(re.findall(r'^voices_turns_total\{model="([^"]+)"\} (\S+)$', text, re.MULTILINE))
    assert len(counted) == MAX_MODELS + 1  # the first MAX_MODELS by name, the rest together
    assert float(counted[OTHER]) == 1000 - MAX_MODELS
    assert sum(float(v) for v in counted.values()) == 1000  # every turn still counted
    spent = re.findall(r"^voices_spend_usd_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert round(sum(float(v) for v in spent), 6) == 1.0
    assert len(text) < 200_000  # a scrape the size of a few hundred series, not of every call


def test_a_model_counted_by_name_keeps_its_name_after_the_bound_is_reached():
    metrics = Metrics()
    names = [f"m/{n}" for n in range(MAX_MODELS)] + ["late/one", "m/0"]
    for n, name in enumerate(names):
        metrics.observe(1, TurnFinished(replace(a_turn(1, n), model_used=name), Decimal(0)))
    text = metrics.exposition().decode()
    assert 'voices_turns_total{model="m/0"} 2.0' in text
    assert 'voices_turns_total{model="other"} 1.0' in text
