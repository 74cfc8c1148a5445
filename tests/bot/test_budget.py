"""The USD budget is a hard cap: worst-case reservations, exact settlement, never a cent over."""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.billing import charge
from bot.budget import (
    Budget,
    cache_saving,
    count_bytes,
    estimate_prompt_tokens,
    format_usd,
    worst_case_cost,
)
from bot.catalogue import Catalogue
from bot.dialogue import DialogueRunner
from bot.errors import InputError, ServerError
from bot.events import Ended
from bot.models import ContextPolicy, ModelInfo, Pricing, Usage, plain
from bot.providers import Route, Router
from bot.providers.base import ChatRequest
from bot.providers.scripted import ScriptedProvider, ScriptedReply
from bot.retry import RetryPolicy
from bot.store import Store
from tests.conftest import RecordingSleep, SteppingClock, make_spec

PRICING = Pricing(
    prompt=Decimal("0.000005"),
    completion=Decimal("0.000025"),
    request=Decimal("0.0001"),
    internal_reasoning=Decimal("0.00003"),
)


def test_worst_case_counts_every_prompt_token_and_the_dearest_output_rate():
    assert worst_case_cost(PRICING, 1000, 200) == Decimal("0.0001") + Decimal("0.005") + Decimal("0.006")


def test_a_cache_write_dearer_than_the_prompt_bounds_the_worst_case():
    cached = Pricing(
        prompt=Decimal("0.000005"), cache_read=Decimal("0.0000005"), cache_write=Decimal("0.00000625")
    )
    assert worst_case_cost(cached, 1000, 0) == Decimal("0.00625")


def test_a_computed_cost_bills_cache_reads_and_writes_at_their_prices_and_the_saving_is_exact():
    cached = Pricing(
        prompt=Decimal("0.000005"),
        completion=Decimal("0.000025"),
        cache_read=Decimal("0.0000005"),
        cache_write=Decimal("0.00000625"),
    )
    usage = Usage(1000, 10, 0, None, cached_tokens=600, cache_write_tokens=300)
    bill = charge(usage, cached, reserved=Decimal(1))
    cost, source = bill.cost, bill.source
    # 100 plain, 600 read, 300 written, 10 out.
    assert (cost, source) == (
        Decimal("0.0005") + Decimal("0.0003") + Decimal("0.001875") + Decimal("0.00025"),
        "computed",
    )
    # Uncached, the prompt would have cost 0.005; it cost 0.002675.
    assert cache_saving(usage, cached) == Decimal("0.002325")
    assert cache_saving(Usage(1000, 10, 0, None, cache_write_tokens=1000), cached) == Decimal("-0.00125")


def test_reported_cost_wins_and_missing_cost_is_computed():
    reported = charge(Usage(10, 10, 0, Decimal("0.42")), PRICING, reserved=Decimal(1))
    assert (reported.cost, reported.source) == (Decimal("0.42"), "reported")
    computed = charge(Usage(1000, 100, 0, None), PRICING, reserved=Decimal(1))
    assert (computed.cost, computed.source) == (
        Decimal("0.0001") + Decimal("0.005") + Decimal("0.0025"),
        "computed",
    )


def test_a_reservation_that_does_not_fit_is_refused_and_settling_frees_the_rest():
    budget = Budget(Decimal("0.01"))
    first = budget.reserve(Decimal("0.006"))
    assert first is not None and budget.reserve(Decimal("0.005")) is None
    budget.settle(first, Decimal("0.002"))
    assert budget.spent == Decimal("0.002") and budget.remaining == Decimal("0.008")


def test_estimate_is_bytes_bounded_and_tightened_by_a_known_prefix():
    messages = [{"role": "user", "content": "héllo wörld"}]
    assert estimate_prompt_tokens(count_bytes(messages)) == len("héllo wörld".encode()) + 16
    longer = messages + [{"role": "assistant", "content": "x" * 400}]
    tightened = estimate_prompt_tokens(count_bytes(longer), known=(5, count_bytes(messages)))
    assert tightened == 5 + 400 + 16 + 16
    assert tightened < estimate_prompt_tokens(count_bytes(longer))


def test_money_is_shown_to_four_places_without_hiding_tiny_amounts():
    assert format_usd(Decimal("0.0373")) == "$0.0373"
    assert format_usd(Decimal("0")) == "$0.0000"
    assert format_usd(Decimal("0.0000123")) == "$0.0000123"


# The property: over random prices (prompt-cache prices too), caps, budgets, contexts and replies
# (long, empty, failing, partly cached), and whatever the context policy, the engine never spends
# more than the budget, and what it spent is exactly the sum of what it recorded: its turns and the
# summaries that compacted the history.

# Mostly answers, sometimes a full-length one, now and then an empty reply or a failure.
KINDS = ["full"] * 3 + ["short"] * 5 + ["empty", "error"]
prices = st.decimals(min_value=Decimal("0"), max_value=Decimal("0.0001"), places=9)


@st.composite
def scenarios(draw):
    pricing = Pricing(
        prompt=draw(prices),
        completion=draw(prices),
        request=draw(prices),
        internal_reasoning=draw(prices),
        cache_read=draw(st.none() | prices),
        cache_write=draw(st.none() | prices),
    )
    max_tokens = draw(st.integers(16, 2000))
    # Budgets of one to ten worst-case calls, so that the cap binds in many examples.
    per_call = worst_case_cost(pricing, 200, max_tokens)
    factor = draw(st.decimals(min_value=Decimal("0.9"), max_value=Decimal("10"), places=2))
    return {
        "pricing": pricing,
        "max_tokens": max_tokens,
        "budget": max((per_call * factor).quantize(Decimal("0.000001")), Decimal("0.000001")),
        "rounds": draw(st.integers(1, 12)),
        "report_cost": draw(st.booleans()),
        "bytes_per_token": draw(st.sampled_from([1, 2, 3.5, 4, 6])),
        # Mostly room enough; sometimes a context the history outgrows within a few rounds.
        "context": draw(st.none() | st.integers(max_tokens + 300, max_tokens + 1200)),
        "policy": draw(st.sampled_from(list(ContextPolicy))),
    }


@settings(
    max_examples=int(os.environ.get("VOICES_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=scenarios(), data=st.data())
def test_spending_never_passes_the_budget(tmp_path_factory, scenario, data):
    pricing: Pricing = scenario["pricing"]

    def reply(request: ChatRequest) -> ScriptedReply:
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        # A stand-in tokenizer that, like real ones, makes at most one token per byte and counts
        # the same messages the same way every time.
        ratio = scenario["bytes_per_token"]
        prompt = sum(math.ceil(len(m["content"].encode()) / ratio) + 4 for m in request.messages)
        completion = data.draw(st.integers(1, request.max_tokens), label="completion")
        if kind == "full":
            completion = request.max_tokens
        cached = data.draw(st.integers(0, prompt), label="cached")
        written = data.draw(st.integers(0, prompt - cached), label="written")
        read_price = pricing.prompt if pricing.cache_read is None else pricing.cache_read
        write_price = pricing.prompt if pricing.cache_write is None else pricing.cache_write
        cost = (
            pricing.request
            + (prompt - cached - written) * pricing.prompt
            + cached * read_price
            + written * write_price
            + completion * max(pricing.completion, pricing.internal_reasoning)
        )
        usage = Usage(
            prompt,
            completion,
            completion if kind == "empty" else 0,
            cost if scenario["report_cost"] else None,
            cached,
            written,
        )
        if kind == "error":
            return ScriptedReply(error=ServerError("upstream hiccup"))
        size = data.draw(st.integers(1, 25), label="words")
        text = "" if kind == "empty" else " ".join(f"w{i}" for i in range(size))
        return ScriptedReply(text=text, usage=usage, finish_reason="length" if kind == "empty" else "stop")

    async def scenario_run() -> None:
        path = Path(tmp_path_factory.mktemp("budget")) / "v.db"
        model = ModelInfo("x/m", "m", scenario["context"], None, pricing)
        other = ModelInfo("x/n", "n", scenario["context"], None, pricing)
        provider = ScriptedProvider([model, other], fallback=reply)
        clock = SteppingClock()
        async with Store.open(path) as store:
            route = Route(provider, Catalogue(provider, store, timedelta(1), clock))
            runner = DialogueRunner(
                store,
                Router(route),
                clock,
                max_rounds=50,
                max_budget=Decimal(1),
                retry=RetryPolicy(),
                sleep=RecordingSleep(),
            )
            spec = make_spec(
                "x/m",
                "x/n",
                rounds=scenario["rounds"],
                budget=str(scenario["budget"]),
                max_tokens=scenario["max_tokens"],
            )
            spec = replace(spec, context_policy=scenario["policy"])
            try:
                dialogue = await runner.create(spec)
            except InputError:
                event("refused: the budget is below the first call's worst case")
                return
            events = [e async for e in runner.run(dialogue.id)]
            final = events[-1]
            assert isinstance(final, Ended)
            turns = await store.list_turns(dialogue.id)
            notes = await store.list_notes(dialogue.id)
            event(f"stopped on {final.dialogue.stop_reason} after {min(len(turns), 3)}+ turns")
            for kind in {n.kind for n in notes if n.kind.is_context}:
                event(f"the history was {kind}")
            assert final.dialogue.totals.spent_usd <= scenario["budget"]
            recorded = sum((t.cost_usd for t in turns), Decimal(0)) + sum(
                (n.cost_usd for n in notes), Decimal(0)
            )
            assert final.dialogue.totals.spent_usd == recorded

    asyncio.run(scenario_run())


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0E-9", "0"),
        ("0.000000000", "0"),
        ("-0", "0"),
        ("0.0000000012", "0.0000000012"),
        ("1.50", "1.5"),
        ("1E+6", "1000000"),
        ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
    ],
)
def test_money_is_written_in_plain_decimal_notation(amount, text):
    """A stored or exported amount never has an exponent ("0E-9" broke readers of JSON decimals)."""
    assert plain(Decimal(amount)) == text
