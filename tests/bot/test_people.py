"""People in the dialogue, in the engine: a human seat, interjections, continuations and forks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from decimal import Decimal

import pytest

from bot.control import Control
from bot.dialogue import validate_spec
from bot.errors import InputError, StateError
from bot.events import AwaitingHuman, Noted, TurnFinished, TurnStarted
from bot.lineage import Caps, continue_dialogue, fork
from bot.models import Lineage, LineageKind, NoteKind, Persona, Status, StopReason, TurnStatus
from bot.privacy import MARKER, REMOVED_NAME, forget_member
from bot.rooms import Room, RoomStore
from bot.transcript import render_json, render_markdown
from tests.conftest import GLM, OPUS, make_spec, run_all
from tests.fake_openrouter import Reply, plain, text_of

pytestmark = pytest.mark.backends("sqlite", "postgres")

ALICE = Persona(name="Alice", model="human:42")


def with_human(rounds=2, **extra):
    spec = make_spec(rounds=rounds, **extra)
    return replace(spec, participants=(ALICE, spec.participants[1]))


async def test_a_person_s_turn_waits_for_their_words_and_is_recorded_free(runner, server, store):
    dialogue = await runner.create(with_human())
    control = Control()
    events = []
    async for event in runner.run(dialogue.id, control):
        events.append(event)
        if isinstance(event, AwaitingHuman):
            assert event.persona == ALICE and event.seat == 0
            control.say(f"  My words, turn {event.seq + 1}.  ")
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    turns = await store.list_turns(dialogue.id)
    assert [t.speaker for t in turns] == ["Alice", "glm-5"] * 2
    alice = turns[0]
    assert alice.text == "My words, turn 1." and alice.is_human
    assert (alice.cost_usd, alice.usage.prompt_tokens, alice.usage.completion_tokens) == (0, 0, 0)
    # Only GLM was called, and it read Alice's words as the other side's.
    assert [r.body["model"] for r in server.chat_requests] == [GLM, GLM]
    assert plain(server.chat_requests[1].body["messages"])[-1] == {
        "role": "user",
        "content": "My words, turn 3.",
    }
    markdown = render_markdown(*await store.history(dialogue.id))
    assert "**Model (Alice):** a person (human seat)" in markdown
    assert (
        "**Alice** *(human)*:\n\nMy words, turn 1.\n\n*[written by a person: no tokens, no cost]*" in markdown
    )


async def test_a_person_who_does_not_answer_in_time_pauses_the_dialogue_until_they_do(runner, store):
    runner.tuning = replace(runner.tuning, human_timeout=0.05)
    dialogue = await runner.create(with_human(rounds=1))
    events = await run_all(runner, dialogue.id)
    assert any(isinstance(e, AwaitingHuman) for e in events)
    assert events[-1].dialogue.status is Status.PAUSED and await store.list_turns(dialogue.id) == []
    # They answer later: the dialogue resumes with their words.
    control = Control()
    control.say("Sorry, I was away.")
    events = await run_all(runner, dialogue.id, control)
    assert not any(isinstance(e, AwaitingHuman) for e in events)
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    assert [t.text for t in await store.list_turns(dialogue.id)][0] == "Sorry, I was away."


async def test_a_stop_while_waiting_for_a_person_ends_at_once(runner, store):
    dialogue = await runner.create(with_human())
    control = Control()
    asyncio.get_running_loop().call_later(0.01, control.stop)
    events = await run_all(runner, dialogue.id, control)
    assert events[-1].dialogue.stop_reason is StopReason.USER_STOP


async def test_a_dialogue_of_people_only_is_refused():
    spec = replace(make_spec(), participants=(ALICE, Persona(name="Bob", model="human:7")))
    with pytest.raises(InputError, match="every seat is a person; a dialogue needs at least one model"):
        validate_spec(spec, 10, Decimal(1))


async def test_an_interjection_reaches_every_model_once_at_the_next_boundary(runner, server, store, clock):
    dialogue = await runner.create(make_spec(rounds=2))
    events = []
    async for event in runner.run(dialogue.id):
        events.append(event)
        if isinstance(event, TurnFinished) and event.turn.seq == 0:
            await store.add_interjection(dialogue.id, "Carol", "Talk about the sea.", clock())
    notes = await store.list_notes(dialogue.id)
    assert [(n.kind, n.before_seq, n.author) for n in notes] == [(NoteKind.INTERJECTION, 1, "Carol")]
    assert [e.note for e in events if isinstance(e, Noted)] == notes
    label = "[Carol, watching, interjects:] Talk about the sea."
    for request in server.chat_requests[1:]:
        seen = "\n".join(text_of(m["content"]) for m in request.body["messages"])
        assert seen.count(label) == 1, request.body["model"]
    assert label not in str(server.chat_requests[0].body)
    markdown = render_markdown(*await store.history(dialogue.id))
    assert "> **Carol** *(interjection)*: Talk about the sea." in markdown
    assert markdown.index("Talk about the sea") < markdown.index("**glm-5:**")


async def test_an_interjection_during_a_turn_waits_for_it_to_end(runner, server, store, clock):
    server.enqueue(Reply(text="A slow reply arriving in pieces.", chunk_words=1, chunk_delay=0.01))
    dialogue = await runner.create(make_spec(rounds=1))
    async for event in runner.run(dialogue.id):
        if type(event).__name__ == "Delta" and event.seq == 0:
            if not await store.list_notes(dialogue.id):
                await store.add_interjection(dialogue.id, "Carol", "Hello!", clock())
    (note,) = await store.list_notes(dialogue.id)
    assert note.before_seq == 1  # after the turn that was being written
    assert "Hello!" in str(server.chat_requests[1].body)


async def test_three_voices_take_turns_and_the_transcript_names_them_all(runner, server, store):
    dialogue = await runner.create(make_spec(OPUS, GLM, "tiny/short-context", rounds=2, max_tokens=100))
    await run_all(runner, dialogue.id)
    turns = await store.list_turns(dialogue.id)
    assert [t.seat for t in turns] == [0, 1, 2, 0, 1, 2]
    markdown = render_markdown(*await store.history(dialogue.id))
    assert markdown.startswith("# Voices Chat: claude-opus-4.6 <-> glm-5 <-> short-context")


# Forks and continuations -------------------------------------------------------------------------


async def finished(runner, rounds=3, **extra):
    dialogue = await runner.create(make_spec(rounds=rounds, **extra))
    await run_all(runner, dialogue.id)
    return dialogue


async def test_a_fork_from_turn_3_holds_exactly_turns_1_to_3_and_goes_on_from_there(runner, server, store):
    parent = await finished(runner)
    parent_turns = await store.list_turns(parent.id)
    child = await fork(runner, parent.id, 3, rounds=1, budget=Decimal("0.5"), origin="cli")
    assert child.parent.kind is LineageKind.FORK and child.parent.turns == 3
    held = await store.list_turns(child.id)
    assert [(t.seq, t.text, t.inherited) for t in held] == [(t.seq, t.text, True) for t in parent_turns[:3]]
    assert child.totals.spent_usd == 0  # carried turns are not paid for again
    before = len(server.chat_requests)
    events = await run_all(runner, child.id)
    # Turn 4 is GLM's, answering Opus's turn 3 with the same history the parent had.
    first = server.chat_requests[before].body
    assert first["model"] == GLM
    assert plain(first["messages"]) == plain(server.chat_requests[3].body["messages"])
    turns = await store.list_turns(child.id)
    assert [t.seq for t in turns if not t.inherited] == [3, 4, 5]  # round 2 finished, then one more
    assert events[-1].dialogue.totals.spent_usd == sum(t.cost_usd for t in turns if not t.inherited)
    markdown = render_markdown(*await store.history(child.id))
    assert f"**Forked from:** dialogue {parent.id} at turn 3" in markdown
    assert f"*Carried over from dialogue {parent.id}:*" in markdown and "*New in this dialogue:*" in markdown
    assert "- **Turns:** 3 (and 3 carried over)" in markdown
    document = json.loads(render_json(*await store.history(parent.id)))
    assert document["dialogue"]["children"] == [child.id]


async def test_a_fork_names_the_turns_it_can_start_from(runner, store):
    parent = await finished(runner, rounds=1)
    with pytest.raises(
        InputError, match=f"dialogue {parent.id} has 2 turns; fork from a turn between 1 and 2"
    ):
        await fork(runner, parent.id, 5, rounds=1, budget=Decimal("0.5"), origin="cli")


async def test_a_continuation_that_fits_carries_the_whole_history_over(runner, server, store):
    parent = await finished(runner, rounds=2)
    child = await continue_dialogue(runner, parent.id, rounds=1, budget=Decimal("0.5"), origin="cli")
    assert child.parent.kind is LineageKind.CONTINUE and child.parent.turns == 4
    assert len(await store.list_turns(child.id)) == 4
    await run_all(runner, child.id)
    assert [t.inherited for t in await store.list_turns(child.id)] == [True] * 4 + [False] * 2


async def test_a_continuation_too_long_for_a_model_remembers_a_summary_in_every_system_prompt(
    runner, server, store
):
    tiny = "tiny/short-context"
    long = [f"Turn {i}: " + " ".join(f"t{i}w{j}" for j in range(60)) for i in range(8)]
    server.enqueue_for(tiny, *(Reply(text=text) for text in long))
    spec = make_spec(tiny, tiny, rounds=4, max_tokens=100, systems=("You are Ann.", "You are Ben."))
    parent = await runner.create(replace(spec, context_policy="truncate"))
    await run_all(runner, parent.id)
    server.enqueue_for(GLM, Reply(text="Ann and Ben counted to sixty, eight times, and disagreed about why."))
    before = len(server.chat_requests)
    child = await continue_dialogue(
        runner, parent.id, rounds=1, budget=Decimal("0.5"), origin="cli", summary_model=GLM
    )
    assert child.parent.turns == 0 and await store.list_turns(child.id) == []
    (memory,) = await store.list_notes(child.id)
    assert memory.kind is NoteKind.MEMORY and memory.model == GLM and memory.cost_usd > 0
    assert child.totals.spent_usd == memory.cost_usd  # counted in the new budget
    summary = "Ann and Ben counted to sixty, eight times, and disagreed about why."
    assert server.chat_requests[before].body["model"] == GLM
    await run_all(runner, child.id)
    requests = server.chat_requests[before + 1 :]
    assert [r.body["model"] for r in requests] == [tiny, tiny]
    for request, (name, other) in zip(requests, [("P0", "P1"), ("P1", "P0")], strict=True):
        system = plain(request.body["messages"])[0]["content"]
        assert system.startswith(("You are Ann.", "You are Ben."))
        assert f"You ({name}) have spoken with {other} before, on " in system and summary in system
    assert plain(requests[0].body["messages"])[1]["content"] == "Let us pick up where we left off."
    markdown = render_markdown(*await store.history(child.id))
    assert "🧠 Remembered from an earlier dialogue" in markdown and summary in markdown
    assert f"**Continues:** dialogue {parent.id} (remembered in summary)" in markdown


async def test_a_continuation_whose_summary_could_pass_the_token_limit_is_refused_before_the_call(
    runner, server, store
):
    tiny = "tiny/short-context"
    long = [f"Turn {i}: " + " ".join(f"t{i}w{j}" for j in range(60)) for i in range(8)]
    server.enqueue_for(tiny, *(Reply(text=text) for text in long))
    # The parent stops at its token limit after six turns, too many to carry whole; a summary of
    # them (at most its prompt by bytes and its reply cap) could use more than the limit allows.
    spec = make_spec(tiny, tiny, rounds=4, max_tokens=100, max_total_tokens=2500)
    parent = await runner.create(replace(spec, context_policy="truncate"))
    await run_all(runner, parent.id)
    before = len(server.chat_requests)
    with pytest.raises(InputError) as refused:
        await continue_dialogue(
            runner, parent.id, rounds=1, budget=Decimal("0.5"), origin="cli", summary_model=GLM
        )
    assert str(refused.value).startswith(f"remembering dialogue {parent.id} could use ")
    assert str(refused.value).endswith(
        f"(dialogue {parent.id}'s token limit, which a continuation keeps); start a new dialogue instead"
    )
    assert len(server.chat_requests) == before  # no summary was asked for
    assert [d.id for d in await store.list_dialogues()] == [parent.id]  # and no half-made dialogue


async def test_a_fork_or_continuation_has_its_own_time_limit_not_what_its_carried_turns_took(
    runner, server, store
):
    # Four slow replies take the parent 4 m; each child plays two under a limit of 3 m: room for its
    # own, where the parent's time counted again would leave none.
    def slow(count: int) -> None:
        server.enqueue(*(Reply(text="slow " * 4, chunk_words=1, chunk_delay=0.05) for _ in range(count)))

    slow(4)
    parent = await runner.create(make_spec(rounds=2, max_seconds=60))
    await run_all(runner, parent.id)
    took = sum(t.latency_ms for t in await store.list_turns(parent.id)) / 1000
    caps = Caps(max_total_tokens=90_000, max_seconds=round(took * 3 / 4, 3))
    for make in (
        lambda: fork(runner, parent.id, 4, rounds=1, budget=Decimal("0.5"), origin="cli", caps=caps),
        lambda: continue_dialogue(
            runner, parent.id, rounds=1, budget=Decimal("0.5"), origin="cli", caps=caps
        ),
    ):
        slow(2)
        child = await make()
        assert (child.limits.max_total_tokens, child.limits.max_seconds) == (90_000, caps.max_seconds)
        final = (await run_all(runner, child.id))[-1].dialogue
        assert final.stop_reason is StopReason.MAX_ROUNDS
        assert [t.status for t in await store.list_turns(child.id) if not t.inherited] == [TurnStatus.OK] * 2
    kept = await fork(runner, parent.id, 4, rounds=1, budget=Decimal("0.5"), origin="cli")
    assert kept.limits.max_seconds == 60  # none given: the parent's


async def test_a_running_dialogue_cannot_be_continued(runner, store):
    dialogue = await runner.create(make_spec())
    with pytest.raises(StateError, match="has not ended; stop it first, or fork it at a turn"):
        await continue_dialogue(runner, dialogue.id, rounds=1, budget=Decimal("0.5"), origin="cli")


async def test_a_continuation_whose_summary_a_crash_cut_off_never_runs_without_its_memory(
    runner, server, store
):
    parent = await finished(runner, rounds=1)
    spec = replace(
        make_spec(rounds=1), parent=Lineage(parent.id, LineageKind.CONTINUE, 0), opening="Pick up."
    )
    child = await runner.create(spec)
    # The process died while the summary was being written: its call is still in flight.
    await store.begin_call(child.id, 0, Decimal("0.004"), child.created_at)
    before = len(server.chat_requests)
    events = await run_all(runner, child.id)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.INTERNAL_ERROR
    assert f"its summary of dialogue {parent.id} was never written" in final.stop_detail
    assert final.totals.spent_usd == Decimal("0.004")  # the lost call is charged, as any other
    assert len(server.chat_requests) == before  # and nothing more is spent


async def test_a_member_forgotten_while_their_dialogue_runs_is_gone_from_its_next_prompts(
    runner, server, store
):
    """Alice speaks, then asks to be forgotten while the dialogue runs on: the model that speaks
    after that is sent the marker in place of her words, and her seat under its new name."""
    spec = make_spec(GLM, OPUS, rounds=1)
    dialogue = await runner.create(replace(spec, participants=(ALICE, *spec.participants)))
    await RoomStore(store).create(Room(dialogue.id, guild_id=7, channel_id=1, thread_id=2, starter_id=99))
    control = Control()
    async for event in runner.run(dialogue.id, control):
        if isinstance(event, AwaitingHuman):
            control.say("Alice's private words.")
        elif isinstance(event, TurnStarted) and event.seat == 1:  # GLM's prompt is already made
            assert (await forget_member(store, guild_id=7, member_id=42)).turns == 1
    glm, opus = (json.dumps(r.body["messages"]) for r in server.chat_requests)
    assert "Alice's private words." in glm  # sent before she asked
    assert "Alice" not in opus and MARKER in opus
    assert REMOVED_NAME in opus
