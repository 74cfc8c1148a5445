"""Bills a provider reports are checked: nonsense is refused and noted, the cap holds, and a bill above
the published prices is recorded as billed, never below it, and stops the dialogue once spent."""

from __future__ import annotations

import copy
import io
from decimal import Decimal

import pytest
from rich.console import Console

from bot.billing import charge, valid_cost
from bot.console import DialogueView, dialogue_table
from bot.events import Noted, TurnFinished, TurnStarted
from bot.models import NoteKind, Pricing, StopReason, TurnStatus, Usage
from bot.providers.openai_compat import OpenAICompatProvider
from bot.transcript import render_json, render_markdown
from tests.conftest import make_spec, run_all
from tests.fake_openrouter import Reply

pytestmark = pytest.mark.backends("sqlite", "postgres")

PRICING = Pricing(prompt=Decimal("0.000005"), completion=Decimal("0.000025"))


@pytest.mark.parametrize(
    ("figure", "usable"),
    [
        (Decimal("0.0012"), True),
        (Decimal("0"), True),
        (Decimal("-1"), False),
        (Decimal("NaN"), False),
        (Decimal("Infinity"), False),
        (Decimal("-Infinity"), False),
        (Decimal("1E+30"), False),
        (None, False),
    ],
)
def test_only_a_finite_non_negative_figure_is_a_bill(figure, usable):
    assert (valid_cost(figure) is not None) is usable


def test_a_figure_finer_than_a_billionth_is_rounded_up_never_down():
    assert valid_cost(Decimal("0.0000000011")) == Decimal("0.000000002")


def test_a_refused_figure_is_priced_from_the_usage_and_says_why():
    bill = charge(Usage(1000, 100, 0, Decimal("-1")), PRICING, reserved=Decimal(1))
    assert (bill.cost, bill.source) == (Decimal("0.0075"), "computed")
    assert bill.rejected == "the provider reported a cost of -1, which cannot be a bill"


def test_impossible_token_counts_are_charged_the_reservation():
    bill = charge(Usage(-5, 100, 0, None), PRICING, reserved=Decimal("0.02"))
    assert (bill.cost, bill.source) == (Decimal("0.02"), "reserved")
    assert "impossible token counts" in (bill.rejected or "")


def test_token_counts_past_any_model_are_charged_the_reservation():
    """10**30 tokens priced would need more digits than a Decimal keeps, and more than a database
    integer holds; no model reads or writes a billion tokens in a call."""
    bill = charge(Usage(40, 10**30, 0, None), PRICING, reserved=Decimal("0.02"))
    assert (bill.cost, bill.source, bill.usage) == (Decimal("0.02"), "reserved", Usage())
    assert "impossible token counts" in (bill.rejected or "")


def test_no_usage_at_all_is_charged_the_reservation_but_a_free_call_stays_free():
    assert charge(None, PRICING, reserved=Decimal("0.02")).cost == Decimal("0.02")
    assert charge(None, Pricing(), reserved=Decimal(0)).cost == 0


def test_a_bill_above_the_reservation_is_recorded_as_billed_and_flagged():
    bill = charge(Usage(10, 10, 0, Decimal("0.5")), PRICING, reserved=Decimal("0.01"))
    assert (bill.cost, bill.over) == (Decimal("0.5"), True)


async def _run_with_cost(runner, store, server, cost, rounds=6, budget="0.05"):
    server.enqueue(*[Reply(text=f"reply {i}", usage=_usage(cost)) for i in range(rounds * 2)])
    dialogue = await runner.create(make_spec(rounds=rounds, budget=budget))
    events = await run_all(runner, dialogue.id)
    return events, await store.get_dialogue(dialogue.id), await store.list_turns(dialogue.id)


def _usage(cost):
    return {"prompt_tokens": 40, "completion_tokens": 12, "cost": cost}


async def test_a_negative_cost_is_refused_and_the_cap_still_binds(runner, store, server):
    """The reported attack: cost -1 let 20 paid calls run on a budget that fits 3."""
    events, final, turns = await _run_with_cost(runner, store, server, Decimal(-1), rounds=20, budget="0.01")
    assert final.stop_reason is StopReason.BUDGET
    assert 0 < final.totals.spent_usd <= Decimal("0.01")
    assert all(t.cost_usd > 0 and t.cost_source == "computed" for t in turns)
    started = [e for e in events if isinstance(e, TurnStarted)]
    assert len(started) == len(turns) < 20
    notes = [e.note for e in events if isinstance(e, Noted) and e.note.kind is NoteKind.BILLING]
    assert len(notes) == len(turns)
    assert "the provider reported a cost of -1, which cannot be a bill" in notes[0].text
    assert "⚠ Bill: the provider reported a cost of -1" in render_markdown(*await store.history(final.id))


async def test_a_bill_note_is_shown_after_the_turn_it_is_about_on_a_line_of_its_own(runner, store, server):
    """The note followed the reply's last streamed words on the same line, before its tokens line."""
    events, _, turns = await _run_with_cost(runner, store, server, Decimal(-1), rounds=1)
    order = [
        (type(e).__name__, e.turn.seq if isinstance(e, TurnFinished) else e.note.before_seq)
        for e in events
        if isinstance(e, TurnFinished) or (isinstance(e, Noted) and e.note.kind is NoteKind.BILLING)
    ]
    assert order == [("TurnFinished", 0), ("Noted", 1), ("TurnFinished", 1), ("Noted", 2)]
    out = io.StringIO()
    view = DialogueView(Console(file=out, color_system=None, width=200))
    for event in events:
        view.show(event)
    view.flush()
    lines = out.getvalue().splitlines()
    assert any(line.startswith("⚠ Bill: the provider reported a cost of -1") for line in lines), lines
    assert lines.index("reply 0") < next(i for i, line in enumerate(lines) if line.startswith("⚠ Bill"))


@pytest.mark.parametrize("cost", [float("inf"), float("nan"), "abc", [1], {"usd": 1}, True])
async def test_a_cost_that_is_not_a_number_never_reaches_the_database(runner, store, server, cost):
    events, final, turns = await _run_with_cost(runner, store, server, cost, rounds=2)
    assert final.stop_reason is StopReason.MAX_ROUNDS
    assert all(t.cost_usd.is_finite() and t.cost_usd > 0 for t in turns)
    assert final.totals.spent_usd == sum(t.cost_usd for t in turns)
    assert not await store.calls_in_flight(final.id)  # nothing orphaned
    # Every view of the database still works.
    history = await store.history(final.id)
    assert "Bill:" in render_markdown(*history) and '"billing"' in render_json(*history)
    dialogue_table(await store.list_dialogues())


async def test_token_counts_that_are_not_numbers_are_charged_the_worst_case(runner, store, server):
    server.enqueue(
        Reply(text="hello", usage={"prompt_tokens": "abc", "completion_tokens": -3, "cost": 0.001})
    )
    dialogue = await runner.create(make_spec(rounds=1, budget="0.5"))
    events = await run_all(runner, dialogue.id)
    first = (await store.list_turns(dialogue.id))[0]
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert first.status is TurnStatus.OK and first.text == "hello"
    # The provider's record of the call is asked first; the fake answers from what it streamed.
    assert first.cost_source in ("reported", "reserved") and first.cost_usd <= started.reserved


@pytest.mark.parametrize("cost", [None, 0.001])
async def test_token_counts_no_model_could_make_neither_crash_nor_reach_the_books(
    runner, store, server, cost
):
    usage = {"prompt_tokens": 40, "completion_tokens": 10**30, "cost": cost}
    server.enqueue(Reply(text="hello", usage=usage))
    dialogue = await runner.create(make_spec(rounds=1, budget="0.5"))
    events = await run_all(runner, dialogue.id)
    final = await store.get_dialogue(dialogue.id)
    turn = (await store.list_turns(dialogue.id))[0]
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert final.stop_reason is StopReason.MAX_ROUNDS  # not an internal error
    assert turn.status is TurnStatus.OK and turn.text == "hello"
    assert turn.cost_usd <= started.reserved and final.totals.completion_tokens < 10**9
    notes = [n.text for n in await store.list_notes(dialogue.id) if n.kind is NoteKind.BILLING]
    assert any("impossible token counts" in n for n in notes)


async def test_prices_that_rose_are_billed_as_billed_refreshed_and_stop_the_dialogue(runner, store, server):
    """The catalogue was cached at old prices; the provider bills ten times that. Voices records what
    was billed (never less), learns the new prices, and stops once the budget is spent."""
    dialogue = await runner.create(make_spec(rounds=10, budget="0.02"))
    server.models = copy.deepcopy(server.models)  # the module's catalogue is every test's
    for model in server.models:
        pricing = model["pricing"]
        for key in ("prompt", "completion", "input_cache_read", "input_cache_write"):
            if key in pricing:
                pricing[key] = str(Decimal(pricing[key]) * 1000)
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    turns = await store.list_turns(dialogue.id)
    assert [t.cost_usd for t in turns] == server.reported_costs[: len(turns)]
    assert final.stop_reason is StopReason.BUDGET
    assert "the provider billed" in final.stop_detail and "published prices" in final.stop_detail
    assert final.totals.spent_usd == sum(t.cost_usd for t in turns)
    # The prices were fetched again: the catalogue was asked for twice.
    assert [r.path for r in server.requests].count("/api/v1/models") == 2


async def test_a_cut_off_call_billed_above_its_reservation_is_recorded_as_billed(
    runner, store, server, monkeypatch
):
    monkeypatch.setattr(OpenAICompatProvider, "LOOKUP_WAITS", (0.0,))
    server.enqueue(Reply(text="slow " * 40, chunk_delay=0.05, chunk_words=1))
    dialogue = await runner.create(make_spec(rounds=2, max_seconds=0.3))
    original = server._generation

    async def overbilled(request, writer):
        for record in server.generations.values():
            record["total_cost"] = Decimal("0.9")
        await original(request, writer)

    monkeypatch.setattr(server, "_generation", overbilled)
    events = await run_all(runner, dialogue.id)
    (turn,) = await store.list_turns(dialogue.id)
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert turn.status is TurnStatus.CANCELLED and started.reserved < Decimal("0.9")
    assert (turn.cost_usd, turn.cost_source) == (Decimal("0.9"), "reported")
    assert events[-1].dialogue.totals.spent_usd == Decimal("0.9")
