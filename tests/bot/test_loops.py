"""Loop and convergence detection: tuned on dialogues written for it, healthy ones never flagged."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bot.events import Noted
from bot.loops import Lookout, LoopThresholds, find, notice, similarity
from bot.models import LoopAction, NoteKind, Status, StopReason, Turn, TurnStatus, Usage
from bot.providers.scripted import ScriptedProvider, ScriptedReply, free_models
from tests.conftest import make_spec, run_all

pytestmark = pytest.mark.backends("sqlite", "postgres")

NAMES = ("Ada", "Basil")
LIMITS = LoopThresholds()

HEALTHY = [
    "I keep thinking about lighthouses. Do you think a lighthouse keeper is lonely, or just alone?",
    "Alone, mostly. Loneliness needs an expectation of company; a keeper chose the opposite.",
    "Then is choosing solitude a kind of company with yourself? I'm not sure that holds.",
    "It holds if the self talks back. Diaries, logbooks, the weather: keepers wrote constantly.",
    "Logbooks are a good point. Writing turns an empty night into a record someone might read.",
    "And the imagined reader is the company. Which makes me wonder who we imagine reading us.",
    "Whoever opens the transcript later, I suppose. That changes how carefully I choose words.",
    "Careful words can also be a wall. Some of the best lines in those logs were clumsy and honest.",
    "Agreed. Clumsy honesty over polish, then. What would you write in tonight's entry?",
    "Wind from the north-east, one ship passed, and a long argument about loneliness. Good night.",
]

LOOPING = [
    "What a wonderful thought. I feel the same gratitude for this shared moment of reflection.",
    "What a wonderful thought. I feel the same deep gratitude for this shared moment of reflection.",
    "Truly, what a wonderful thought. I feel the same gratitude for this shared moment of reflection.",
    "What a wonderful thought. I too feel the same gratitude for this shared moment of reflection.",
]

FAREWELLS = [
    "This has been lovely. Goodbye, my friend, until next time.",
    "Goodbye! It was a pleasure talking with you. Take care.",
    "Farewell, and thank you for the conversation. Take care!",
    "Until we meet again, goodbye, and take care of yourself.",
]


def turns_of(texts, speakers=NAMES):
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Turn(
            dialogue_id=1,
            seq=i,
            round=i // 2 + 1,
            seat=i % 2,
            speaker=speakers[i % 2],
            status=TurnStatus.OK,
            text=text,
            reasoning="",
            usage=Usage(),
            cost_usd=Decimal(0),
            cost_source="reported",
            model_used="x/m",
            finish_reason="stop",
            latency_ms=0,
            attempts=1,
            started_at=moment,
            ended_at=moment,
        )
        for i, text in enumerate(texts)
    ]


def kinds(turns):
    return {f.kind for f in find(turns, NAMES, LIMITS)}


def test_a_healthy_dialogue_is_never_flagged_at_any_turn():
    turns = turns_of(HEALTHY)
    for end in range(1, len(turns) + 1):
        assert find(turns[:end], NAMES, LIMITS) == [], f"flagged after turn {end}"


def test_turns_that_keep_repeating_each_other_are_a_loop():
    assert similarity(LOOPING[0], LOOPING[1]) > LIMITS.similarity
    assert similarity(HEALTHY[0], HEALTHY[1]) < 0.1
    turns = turns_of(HEALTHY[:4] + LOOPING)
    assert NoteKind.REPETITION not in kinds(turns[:6])  # one echo is a quotation, not a loop
    assert NoteKind.REPETITION in kinds(turns[:7])  # two in a row are a loop


def test_repeated_farewells_are_a_loop_but_one_goodbye_is_an_ending():
    assert kinds(turns_of(HEALTHY)) == set()  # the healthy one ends with "Good night."
    assert kinds(turns_of(HEALTHY[:6] + FAREWELLS[:2])) == set()
    assert NoteKind.FAREWELLS in kinds(turns_of(HEALTHY[:6] + FAREWELLS[:3]))


def test_writing_the_other_persona_s_lines_is_noticed():
    text = "I agree entirely.\n\nBasil: And I would add that the sea is patient.\nAda: Indeed."
    turns = turns_of(HEALTHY[:2] + [text])
    found = find(turns, NAMES, LIMITS)
    assert [(f.kind, f.detail) for f in found] == [(NoteKind.IMPERSONATION, "Ada wrote lines for Basil")]
    # Naming the other in a sentence is not writing their lines.
    assert kinds(turns_of(HEALTHY[:2] + ["Basil, you said the sea is patient: I doubt it."])) == set()


def test_notice_reports_a_loop_once_when_it_starts_not_at_every_turn():
    turns = turns_of(HEALTHY[:4] + LOOPING)
    started = [len(notice(turns[:end], NAMES, LIMITS)) for end in range(1, len(turns) + 1)]
    assert started == [0, 0, 0, 0, 0, 0, 1, 0]


def test_a_lookout_kept_over_a_dialogue_reports_what_a_fresh_look_at_each_turn_does():
    """The runner keeps one lookout per run, reading each turn once; it must find the same."""
    farewell_loop = HEALTHY[:3] + FAREWELLS[:3] + ["Basil: I wrote this for you.\nAda: thanks"]
    for texts in (HEALTHY[:4] + LOOPING + HEALTHY[:2] + LOOPING, farewell_loop):
        turns = turns_of(texts)
        lookout = Lookout(NAMES, LIMITS)
        ends = range(1, len(turns) + 1)
        kept = [[(f.kind, f.detail) for f in lookout.notice(turns[:end])] for end in ends]
        fresh = [[(f.kind, f.detail) for f in notice(turns[:end], NAMES, LIMITS)] for end in ends]
        assert kept == fresh
        assert any(kept)


def test_a_lookout_that_missed_turns_looks_again_rather_than_trust_its_memory():
    turns = turns_of(HEALTHY[:4] + LOOPING)
    lookout = Lookout(NAMES, LIMITS)
    lookout.notice(turns[:2])
    # Four turns later (a resumed run, say), a loop already under way is new to this look only if
    # it was not there a turn before.
    assert lookout.notice(turns[:7]) == notice(turns[:7], NAMES, LIMITS)
    assert lookout.notice(turns) == notice(turns, NAMES, LIMITS) == []


# The engine acts on what it notices ------------------------------------------------------------


async def run_looping(make_runner, store, action):
    provider = ScriptedProvider(free_models(["x/a", "x/b"]), fallback=None)
    provider.enqueue(*(ScriptedReply(text=t) for t in HEALTHY[:2] + LOOPING + LOOPING))
    runner = make_runner(provider)
    spec = replace(make_spec("x/a", "x/b", rounds=5), loop_action=action)
    dialogue = await runner.create(spec)
    events = await run_all(runner, dialogue.id)
    return runner, events, await store.list_turns(dialogue.id), await store.list_notes(dialogue.id)


async def test_stop_on_loop_ends_with_convergence_and_records_why(make_runner, store):
    _, events, turns, notes = await run_looping(make_runner, store, LoopAction.STOP)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.CONVERGENCE and final.status is Status.FINISHED
    assert len(turns) == 5  # two healthy turns, a new thought, then two echoes of it in a row
    assert [(n.kind, n.before_seq) for n in notes] == [(NoteKind.REPETITION, 5)]
    assert "repeat recent ones" in final.stop_detail


async def test_notify_on_loop_records_the_note_and_carries_on(make_runner, store):
    _, events, turns, notes = await run_looping(make_runner, store, LoopAction.NOTIFY)
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS and len(turns) == 10
    assert [e.note for e in events if isinstance(e, Noted)] == notes
    assert NoteKind.REPETITION in {n.kind for n in notes}


async def test_pause_on_loop_pauses_and_the_dialogue_can_be_resumed(make_runner, store):
    runner, events, turns, notes = await run_looping(make_runner, store, LoopAction.PAUSE)
    assert events[-1].dialogue.status is Status.PAUSED and len(turns) == 5
    assert [n.kind for n in notes] == [NoteKind.REPETITION]
    # Resumed, it carries on: the same loop is not reported again.
    resumed = await run_all(runner, turns[0].dialogue_id)
    assert resumed[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    assert [n.kind for n in await store.list_notes(turns[0].dialogue_id)] == [NoteKind.REPETITION]


@pytest.mark.parametrize("threshold, flagged", [(0.5, True), (0.95, False)])
def test_the_similarity_threshold_comes_from_the_settings(threshold, flagged):
    limits = replace(LIMITS, similarity=threshold)
    found = find(turns_of(HEALTHY[:4] + LOOPING), NAMES, limits)
    assert (NoteKind.REPETITION in {f.kind for f in found}) is flagged


async def test_a_healthy_dialogue_runs_every_round_even_with_stop_on_loop(make_runner, store):
    provider = ScriptedProvider(free_models(["x/a", "x/b"]), fallback=None)
    provider.enqueue(*(ScriptedReply(text=t) for t in HEALTHY))
    runner = make_runner(provider)
    dialogue = await runner.create(replace(make_spec("x/a", "x/b", rounds=5), loop_action=LoopAction.STOP))
    events = await run_all(runner, dialogue.id)
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    assert await store.list_notes(dialogue.id) == []
