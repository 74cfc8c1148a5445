"""The referee against the loopback server: when it judges, what it reads, what it costs, and that a
referee that cannot judge never takes the dialogue down with it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from decimal import Decimal

import pytest

from bot.control import Control
from bot.errors import InputError
from bot.events import Noted, TurnFinished
from bot.models import NoteKind, Persona, Status, StopReason
from bot.transcript import render_json, render_markdown
from tests.conftest import GLM, OPUS, make_spec, run_all
from tests.fake_openrouter import Reply, text_of

pytestmark = pytest.mark.backends("sqlite", "postgres")

JUDGE = Persona(name="Judge", model=OPUS, system_prompt="You are strict but fair.", max_tokens=200)


def refereed(rounds=2, every=None, budget="1", **kwargs):
    spec = make_spec(GLM, GLM, rounds=rounds, budget=budget, **kwargs)
    return replace(spec, referee=JUDGE, referee_every=every)


def verdicts(notes):
    return [n for n in notes if n.kind in (NoteKind.VERDICT, NoteKind.NO_VERDICT)]


async def test_the_referee_reads_the_whole_dialogue_at_its_end_and_its_verdict_is_kept_and_paid(
    runner, server, store
):
    dialogue = await runner.create(refereed(rounds=2))
    said = ("Cats are better.", "Dogs are better.", "Cats still.", "Dogs still.")
    server.enqueue(*(Reply(text) for text in said))
    server.enqueue_for(OPUS, Reply("P0 made the stronger case: the argument held."))
    events = await run_all(runner, dialogue.id)

    judged = [e.note for e in events if isinstance(e, Noted)]
    assert [(n.kind, n.author, n.text) for n in judged] == [
        (NoteKind.VERDICT, "Judge", "P0 made the stronger case: the argument held.")
    ]
    # The verdict comes after the last turn, and before the dialogue's end.
    assert events.index(next(e for e in events if isinstance(e, Noted))) > max(
        i for i, e in enumerate(events) if isinstance(e, TurnFinished)
    )
    asked = server.chat_requests[-1].body
    assert asked["model"] == OPUS
    system, shown = (text_of(m["content"]) for m in asked["messages"])
    assert system.startswith("You are strict but fair.") and "referee" in system and "ended" in system
    for said in ("P0: Cats are better.", "P1: Dogs are better.", "P0: Cats still.", "P1: Dogs still."):
        assert said in shown
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.MAX_ROUNDS
    # Every cent the server billed is in the totals: four turns and the verdict.
    assert final.totals.spent_usd == sum(server.reported_costs)
    assert judged[0].cost_usd == server.reported_costs[-1] > 0

    history = await store.history(dialogue.id)
    markdown = render_markdown(*history)
    assert "**Referee:** Judge (`anthropic/claude-opus-4.6`), at the end" in markdown
    assert "> P0 made the stronger case: the argument held." in markdown
    assert "- **Referee** Judge (`anthropic/claude-opus-4.6`): 1 verdict, 0 missed" in markdown
    document = json.loads(render_json(*history))
    assert document["referee"]["name"] == "Judge" and document["referee"]["model"] == OPUS
    [note] = [n for n in document["notes"] if n["kind"] == "verdict"]
    assert note["author"] == "Judge" and Decimal(note["cost_usd"]) == judged[0].cost_usd
    assert note["before_seq"] == 4


async def test_every_n_rounds_the_referee_judges_the_rounds_so_far_then_at_the_end(runner, server, store):
    dialogue = await runner.create(refereed(rounds=5, every=2))
    await run_all(runner, dialogue.id)
    notes = verdicts(await store.list_notes(dialogue.id))
    # After rounds 2 and 4, and the final one after round 5: never twice at one point.
    assert [n.before_seq for n in notes] == [4, 8, 10]
    asks = [r.body for r in server.chat_requests if r.body["model"] == OPUS]
    assert "after round 2 of 5" in text_of(asks[0]["messages"][0]["content"])
    assert "It has ended" in text_of(asks[2]["messages"][0]["content"])
    # The interim verdicts are not fed to the speakers: they only judge.
    for request in server.chat_requests:
        if request.body["model"] == GLM:
            assert not any(n.text in text_of(m["content"]) for n in notes for m in request.body["messages"])


async def test_an_interjection_left_as_a_judged_round_ends_is_still_announced(runner, store, clock):
    """The verdict reads the notes between two turns; one left just before must still be reported
    at the boundary, as every other interjection is (the terminal and Discord show it from there)."""
    dialogue = await runner.create(refereed(rounds=2, every=1))
    events = []
    async for event in runner.run(dialogue.id):
        events.append(event)
        if isinstance(event, TurnFinished) and event.turn.seq == 1:  # round 1 ends: a verdict is due
            await store.add_interjection(dialogue.id, "Carol", "Talk about the sea.", clock())
    noted = [e.note for e in events if isinstance(e, Noted)]
    assert [(n.kind, n.author) for n in noted] == [
        (NoteKind.VERDICT, "Judge"),
        (NoteKind.INTERJECTION, "Carol"),
        (NoteKind.VERDICT, "Judge"),
    ]


async def test_a_budget_too_small_for_the_verdict_is_refused_before_anything_is_spent(runner, server):
    # GLM's first call fits in $0.001; the referee (Opus, 200 tokens at $25/M) does not fit beside it.
    with pytest.raises(InputError, match=r"cannot pay for the first call .* and the referee's verdict"):
        await runner.create(refereed(budget="0.004"))
    assert server.chat_requests == []


async def test_turns_leave_room_for_the_verdict_so_a_tight_budget_still_ends_judged(runner, server, store):
    dialogue = await runner.create(refereed(rounds=30, budget="0.02"))
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.BUDGET
    assert "and the referee's verdict up to $" in final.stop_detail
    assert 4 <= len(await store.list_turns(dialogue.id)) < 60
    [verdict] = verdicts(await store.list_notes(dialogue.id))
    assert verdict.kind is NoteKind.VERDICT
    assert final.totals.spent_usd == sum(server.reported_costs) <= Decimal("0.02")


async def test_a_referee_that_fails_leaves_a_note_and_the_dialogue_still_finishes(runner, server, store):
    dialogue = await runner.create(refereed(rounds=1))
    server.enqueue_for(OPUS, Reply(status=400, error={"message": "This model is unavailable", "code": 400}))
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.status is Status.FINISHED and final.stop_reason is StopReason.MAX_ROUNDS
    [note] = verdicts(await store.list_notes(dialogue.id))
    assert note.kind is NoteKind.NO_VERDICT and "This model is unavailable" in note.text
    assert note.cost_usd == 0 and final.totals.spent_usd == sum(server.reported_costs)
    assert "⚖ Judge gave no verdict: " in render_markdown(*await store.history(dialogue.id))


async def test_a_verdict_that_could_pass_the_token_limit_is_not_asked_for(runner, server, store):
    # The turns leave 1,000 tokens under the limit: room for each of them, not for a verdict that
    # may write 2,000.
    judge = replace(JUDGE, max_tokens=2000)
    said = ("Cats are better.", "Dogs are better.")
    server.enqueue(*(Reply(text) for text in said))
    probe = await runner.create(replace(make_spec(GLM, GLM, rounds=1), referee=judge))
    await run_all(runner, probe.id)
    used = sum(t.usage.prompt_tokens + t.usage.completion_tokens for t in await store.list_turns(probe.id))
    server.enqueue(*(Reply(text) for text in said))
    asked = len(server.chat_requests)
    dialogue = await runner.create(
        replace(make_spec(GLM, GLM, rounds=1, max_total_tokens=used + 1000), referee=judge)
    )
    final = (await run_all(runner, dialogue.id))[-1].dialogue
    assert final.status is Status.FINISHED and final.stop_reason is StopReason.MAX_ROUNDS
    assert [r.body["model"] for r in server.chat_requests[asked:]] == [GLM, GLM]
    [note] = verdicts(await store.list_notes(dialogue.id))
    assert note.kind is NoteKind.NO_VERDICT and note.cost_usd == 0
    assert note.text.startswith("the referee's verdict could use ")
    assert note.text.endswith("1,000 are left under the limit")
    assert final.totals.total_tokens == used


async def test_a_verdict_the_provider_took_before_the_connection_dropped_is_charged(runner, server, store):
    # Every try at the verdict is taken, writes a word and drops: each is billed by the provider.
    dialogue = await runner.create(refereed(rounds=1))
    drop = Reply("The verdict would have", chunk_words=1, drop_after_chunks=1, chunk_delay=0.02)
    server.enqueue_for(OPUS, drop, drop, drop)
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.status is Status.FINISHED and final.stop_reason is StopReason.MAX_ROUNDS
    dropped = [g for g, record in server.generations.items() if not record["finished"]]
    assert len(dropped) == 3 and server.generation_lookups == dropped
    billed = sum(server.generations[g]["total_cost"] for g in dropped)
    assert billed > 0 and final.totals.spent_usd == sum(server.reported_costs) + billed
    notes = await store.list_notes(dialogue.id)
    [bill] = [n for n in notes if n.kind is NoteKind.BILLING]
    assert bill.cost_usd == billed and bill.model == OPUS
    markdown = render_markdown(*await store.history(dialogue.id))
    assert "the provider took it first, and it was charged" in markdown
    assert "⚖ Judge gave no verdict: " in markdown


async def test_a_verdict_cut_off_by_a_stop_is_charged_what_the_provider_billed(runner, server, store):
    dialogue = await runner.create(refereed(rounds=1))
    server.enqueue_for(OPUS, Reply("a slow verdict " * 20, chunk_words=1, chunk_delay=0.05))
    control, finished = Control(), 0
    async for event in runner.run(dialogue.id, control):
        if isinstance(event, TurnFinished) and (finished := finished + 1) == 2:
            asyncio.get_running_loop().call_later(0.2, control.stop, True)  # while the verdict streams
    final = await store.get_dialogue(dialogue.id)
    (verdict,) = [g for g, record in server.generations.items() if not record["finished"]]
    assert server.generation_lookups == [verdict]
    billed = server.generations[verdict]["total_cost"]
    assert 0 < billed and final.totals.spent_usd == sum(server.reported_costs) + billed


async def test_a_dialogue_stopped_by_a_member_is_not_judged(runner, server, store):
    dialogue = await runner.create(refereed(rounds=3))
    control = Control()
    events = []
    async for event in runner.run(dialogue.id, control):
        events.append(event)
        if isinstance(event, TurnFinished):
            control.stop()
    assert events[-1].dialogue.stop_reason is StopReason.USER_STOP
    assert verdicts(await store.list_notes(dialogue.id)) == []
    assert all(r.body["model"] == GLM for r in server.chat_requests)


async def test_an_interval_needs_a_referee_and_fits_the_rounds(runner):
    with pytest.raises(InputError, match="needs a referee"):
        await runner.create(replace(make_spec(rounds=2), referee_every=1))
    with pytest.raises(InputError, match="interval must be from 1 to the rounds"):
        await runner.create(refereed(rounds=2, every=3))
    with pytest.raises(InputError, match="the referee must be a model"):
        await runner.create(replace(refereed(), referee=Persona("Me", "human:1")))


@pytest.mark.parametrize("cost", [-1, "NaN", "abc", 1e30])
async def test_a_referee_whose_provider_bills_nonsense_is_charged_a_real_amount_within_the_budget(
    runner, server, store, cost
):
    dialogue = await runner.create(refereed(rounds=1, budget="0.05"))
    lie = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "cost": cost}
    server.enqueue_for(OPUS, Reply("\x1b]52;c;aGk=\x07**Forged** [link](javascript:x) verdict", usage=lie))
    final = (await run_all(runner, dialogue.id))[-1].dialogue
    [note] = verdicts(await store.list_notes(dialogue.id))
    assert note.cost_usd.is_finite() and 0 <= note.cost_usd <= Decimal("0.05")
    assert final.totals.spent_usd <= Decimal("0.05")
    turns = await store.list_turns(dialogue.id)
    assert final.totals.spent_usd == sum(t.cost_usd for t in turns) + note.cost_usd
    markdown = render_markdown(*await store.history(dialogue.id))
    # The clipboard-writing escape is dropped; the verdict stays one quoted block (a model's inline
    # emphasis is its text, kept as in turns).
    assert "\x1b" not in markdown and "\x07" not in markdown and "52;c" not in markdown
    assert "> **Forged** [link](javascript:x) verdict" in markdown.splitlines()
