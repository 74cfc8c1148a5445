"""Long dialogues against the loopback server: prompt caching, and each context policy at the edge."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot.budget import format_usd
from bot.catalogue import Catalogue
from bot.dialogue import DialogueRunner
from bot.errors import InputError, UnknownModel
from bot.events import Noted
from bot.models import ContextPolicy, Dialogue, NoteKind, Persona, StopReason
from bot.plan import Tuning
from bot.providers import Route, Router
from bot.transcript import render_json, render_markdown
from tests.conftest import GLM, OPUS, make_spec, run_all
from tests.fake_openrouter import MODELS, Reply, plain, text_of

pytestmark = pytest.mark.backends("sqlite", "postgres")

TINY = "tiny/short-context"
EPHEMERAL = {"type": "ephemeral"}


def marks(messages):
    """Return the indices of the messages that carry a cache breakpoint."""
    return [
        i
        for i, m in enumerate(messages)
        if isinstance(m["content"], list) and any(p.get("cache_control") == EPHEMERAL for p in m["content"])
    ]


def prices(model_id):
    pricing = next(m["pricing"] for m in MODELS if m["id"] == model_id)
    return {k: Decimal(v) for k, v in pricing.items()}


# Prompt caching ----------------------------------------------------------------------------------


async def test_anthropic_requests_mark_the_system_prompt_the_last_prefix_and_the_new_tail(runner, server):
    dialogue = await runner.create(make_spec(rounds=3))
    await run_all(runner, dialogue.id)
    opus = [r.body for r in server.chat_requests if r.body["model"] == OPUS]
    # system+opening; then the previous request's tail (before its reply) and the new tail.
    assert [marks(b["messages"]) for b in opus] == [[0, 1], [0, 1, 3], [0, 3, 5]]
    # Marking changes nothing of what the model reads.
    assert plain(opus[2]["messages"])[:2] == plain(opus[1]["messages"])[:2]


async def test_implicitly_caching_models_get_no_marks_but_one_session_per_speaker(runner, server):
    dialogue = await runner.create(make_spec(rounds=3))
    await run_all(runner, dialogue.id)
    sessions = {}
    for request in server.chat_requests:
        body = request.body
        if body["model"] == GLM:
            assert marks(body["messages"]) == []
            assert all(isinstance(m["content"], str) for m in body["messages"])
        sessions.setdefault(body["model"], set()).add(body["session_id"])
    assert sessions == {OPUS: {f"voices-{dialogue.id}-0"}, GLM: {f"voices-{dialogue.id}-1"}}


async def test_cached_and_written_tokens_are_recorded_per_turn_as_the_server_reported_them(
    runner, server, store
):
    dialogue = await runner.create(make_spec(rounds=3))
    await run_all(runner, dialogue.id)
    turns = await store.list_turns(dialogue.id)
    opus = [t for t in turns if t.seat == 0]
    glm = [t for t in turns if t.seat == 1]
    # Opus writes its whole first prompt, then reads it back and writes only what is new.
    first = server.chat_requests[0].body["messages"]
    assert opus[0].usage.cached_tokens == 0
    assert opus[0].usage.cache_write_tokens == sum(len(text_of(m["content"])) for m in first) // 4
    assert opus[1].usage.cached_tokens == opus[0].usage.cache_write_tokens
    assert opus[2].usage.cached_tokens > opus[1].usage.cached_tokens > 0
    # GLM caches on its own: nothing written, its earlier prompt read back.
    assert glm[0].usage.cached_tokens == 0
    assert all(t.usage.cache_write_tokens == 0 for t in glm)
    assert glm[2].usage.cached_tokens > glm[1].usage.cached_tokens > 0
    final = await store.get_dialogue(dialogue.id)
    assert final.totals.spent_usd == sum(server.reported_costs)


async def test_the_saving_is_computed_exactly_and_shown_in_the_transcript(runner, server, store):
    dialogue = await runner.create(make_spec(rounds=3))
    await run_all(runner, dialogue.id)
    history = await store.history(dialogue.id)
    _, turns, _ = history
    for turn in turns:
        p = prices(turn.model_used)
        read = p.get("input_cache_read", p["prompt"])
        write = p.get("input_cache_write", p["prompt"])
        usage = turn.usage
        expected = usage.cached_tokens * (p["prompt"] - read) - usage.cache_write_tokens * (
            write - p["prompt"]
        )
        assert turn.cache_saving_usd == expected
    saved = sum(t.cache_saving_usd for t in turns)
    assert saved > 0  # three rounds are enough for the reads to pay back the writes
    markdown = render_markdown(*history)
    cached = sum(t.usage.cached_tokens for t in turns)
    written = sum(t.usage.cache_write_tokens for t in turns)
    assert (
        f"- **Prompt cache:** read={cached}, written={written} tokens; saved {format_usd(saved)}" in markdown
    )
    assert f"cached={turns[2].usage.cached_tokens}, cache_write=" in markdown
    totals = json.loads(render_json(*history))["totals"]
    assert (totals["cached_tokens"], Decimal(totals["cache_saving_usd"])) == (cached, saved)


async def test_models_not_listed_for_breakpoints_are_sent_plain(make_runner, provider, server, store):
    runner = make_runner(provider)
    runner.tuning = Tuning(cache_breakpoint_models=())
    dialogue = await runner.create(make_spec(rounds=2))
    await run_all(runner, dialogue.id)
    assert all(marks(r.body["messages"]) == [] for r in server.chat_requests)
    turns = await store.list_turns(dialogue.id)
    assert all(t.usage.cache_write_tokens == 0 for t in turns)


# Context at the edge ---------------------------------------------------------------------------


# Tiny has a 700-token context; replies of ~60 words outgrow it within a few rounds.
def long_text(turn):
    return f"Turn {turn}: " + " ".join(f"t{turn}w{i}" for i in range(60))


def tiny_spec(policy, rounds=6, budget="1", **extra):
    spec = make_spec(
        TINY, TINY, rounds=rounds, budget=budget, max_tokens=100, opening="Begin with the word apple."
    )
    return replace(spec, context_policy=policy, **extra)


def long_replies(server, count):
    server.enqueue_for(TINY, *(Reply(text=long_text(i)) for i in range(count)))


def prompt_tokens(body):
    """The fake server's own count of a request's prompt tokens."""
    return sum(len(text_of(m["content"])) for m in body["messages"]) // 4 + 5


async def test_the_stop_policy_ends_the_dialogue_before_a_request_could_overflow(runner, server, store):
    long_replies(server, 12)
    dialogue = await runner.create(tiny_spec(ContextPolicy.STOP))
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.CONTEXT_LIMIT
    assert "exceed tiny/short-context's 700" in final.stop_detail
    assert await store.list_notes(dialogue.id) == []
    assert all(prompt_tokens(r.body) + 100 <= 700 for r in server.chat_requests)


@pytest.mark.parametrize("policy", [ContextPolicy.TRUNCATE, ContextPolicy.COMPACT])
async def test_an_opening_too_long_for_the_context_is_refused_and_named_as_such(
    runner, server, store, policy
):
    """With no history yet there is nothing to drop or summarise. The dialogue is refused before
    it is made; one that got past that (its model's context shrank before it ran) stops saying the
    opening itself is too long, not that even a summary of the history would not fit."""
    spec = replace(tiny_spec(policy), opening="word " * 1000)
    with pytest.raises(
        InputError,
        match=(
            "^P0's system prompt and the opening could be 5,0[0-9][0-9] tokens, which with 100 for the "
            "reply exceed tiny/short-context's context of 700; shorten the opening or choose a model "
            "with a longer context$"
        ),
    ):
        await runner.create(spec)
    # A person speaking first changes nothing: the first model still reads the opening first.
    person = Persona("Ann", "human:Ann", "")
    with pytest.raises(InputError, match="^P1's system prompt and the opening could be"):
        await runner.create(replace(spec, participants=(person, spec.participants[1])))
    assert await store.list_dialogues() == []
    dialogue = await store.create_dialogue(spec, datetime.now(UTC))
    final = (await run_all(runner, dialogue.id))[-1].dialogue
    assert final.stop_reason is StopReason.CONTEXT_LIMIT
    assert final.stop_detail.endswith(
        "exceed tiny/short-context's 700: the opening and system prompt alone; shorten them or "
        "choose a model with a longer context"
    )
    assert server.chat_requests == [] and final.totals.spent_usd == 0


async def test_truncation_drops_the_oldest_turns_keeps_the_opening_and_carries_on(runner, server, store):
    long_replies(server, 12)
    dialogue = await runner.create(tiny_spec(ContextPolicy.TRUNCATE))
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.MAX_ROUNDS
    notes = await store.list_notes(dialogue.id)
    assert notes and {n.kind for n in notes} == {NoteKind.TRUNCATED}
    assert [e.note for e in events if isinstance(e, Noted)] == notes
    for request in server.chat_requests:
        assert prompt_tokens(request.body) + 100 <= 700  # every request fit
        texts = [text_of(m["content"]) for m in request.body["messages"]]
        assert "Begin with the word apple." in texts[1]
    last = "\n".join(text_of(m["content"]) for m in server.chat_requests[-1].body["messages"])
    assert "Turn 0:" not in last and f"first {notes[-1].first_kept_seq} turns are left out" in last
    markdown = render_markdown(*await store.history(dialogue.id))
    assert all(f"✂ Context truncated: {n.text}" in markdown for n in notes)
    assert (
        notes[-1].first_kept_seq > 1 and f"Turns 1–{notes[-1].first_kept_seq} are left out" in notes[-1].text
    )


async def test_compaction_summarises_with_the_chosen_model_and_bills_it_in_the_budget(runner, server, store):
    long_replies(server, 12)
    server.enqueue_for(GLM, Reply(text="They agreed on apples and argued about pears."))
    dialogue = await runner.create(tiny_spec(ContextPolicy.COMPACT, summary_model=GLM))
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.MAX_ROUNDS, final.stop_detail
    notes = await store.list_notes(dialogue.id)
    compacted = [n for n in notes if n.kind is NoteKind.COMPACTED]
    assert len(compacted) >= 1
    note = compacted[0]
    assert note.text == "They agreed on apples and argued about pears."
    assert note.model == GLM and note.cost_usd > 0
    # The summary request went to GLM with the turns it replaces; the next turn carries the summary.
    summary_index = next(i for i, r in enumerate(server.chat_requests) if r.body["model"] == GLM)
    asked = server.chat_requests[summary_index].body["messages"]
    assert "Summarise" in asked[0]["content"] and "Turn 0:" in asked[1]["content"]
    after = server.chat_requests[summary_index + 1].body["messages"]
    shown = "\n".join(text_of(m["content"]) for m in after)
    assert "They agreed on apples and argued about pears." in shown and "Turn 0:" not in shown
    assert "Begin with the word apple." in shown
    # The summary's cost is part of what was spent, and of nothing else.
    turns = await store.list_turns(dialogue.id)
    assert final.totals.spent_usd == sum(server.reported_costs)
    assert final.totals.spent_usd == sum(t.cost_usd for t in turns) + sum(n.cost_usd for n in notes)
    markdown = render_markdown(*await store.history(dialogue.id))
    assert "⟲ Context compacted: the first" in markdown
    assert "> They agreed on apples and argued about pears." in markdown
    assert "compactions" in markdown


async def test_a_compaction_the_budget_cannot_cover_stops_the_dialogue_before_the_call(runner, server, store):
    long_replies(server, 12)
    # Enough for the tiny model's turns, not for a summary written by Opus.
    spec = tiny_spec(ContextPolicy.COMPACT, summary_model=OPUS, budget="0.006")
    dialogue = await runner.create(spec)
    events = await run_all(runner, dialogue.id)
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.BUDGET
    assert final.stop_detail.startswith("compacting the history could cost up to $0.0")
    assert all(r.body["model"] == TINY for r in server.chat_requests)
    assert final.totals.spent_usd == sum(server.reported_costs) <= Decimal("0.006")


async def test_a_compaction_that_could_pass_the_token_limit_stops_the_dialogue_before_the_call(
    runner, server, store
):
    # A probe run finds the tokens used before the history needed compacting; under a limit with
    # room for one more turn but not for a summary of everything, the summary is never asked for.
    long_replies(server, 12)
    server.enqueue_for(GLM, Reply(text="A summary."))
    probe = await runner.create(tiny_spec(ContextPolicy.COMPACT, summary_model=GLM))
    await run_all(runner, probe.id)
    (compacted, *_) = [n for n in await store.list_notes(probe.id) if n.kind is NoteKind.COMPACTED]
    before = sum(
        t.usage.prompt_tokens + t.usage.completion_tokens
        for t in await store.list_turns(probe.id)
        if t.seq < compacted.before_seq
    )
    limit = before + 701
    long_replies(server, 12)
    asked = len(server.chat_requests)
    spec = tiny_spec(ContextPolicy.COMPACT, summary_model=GLM)
    spec = replace(spec, limits=replace(spec.limits, max_total_tokens=limit))
    dialogue = await runner.create(spec)
    final = (await run_all(runner, dialogue.id))[-1].dialogue
    assert final.stop_reason is StopReason.TOKENS
    assert final.stop_detail.startswith("compacting the history could use ")
    assert final.stop_detail.endswith(f"{limit - before:,} are left under the limit")
    assert all(r.body["model"] == TINY for r in server.chat_requests[asked:])
    assert final.totals.total_tokens == before <= limit


async def test_a_summary_retry_that_could_pass_the_token_limit_is_not_made(runner, server, store):
    # Probes find the tokens used before the history needed compacting, then what a summary call
    # may use (its refusal says). Under a limit 10 tokens above both, the summary is asked for,
    # writes 150 words and drops: those count, and a second try could pass the limit.
    long_replies(server, 12)
    server.enqueue_for(GLM, Reply(text="A summary."))
    probe = await runner.create(tiny_spec(ContextPolicy.COMPACT, summary_model=GLM))
    await run_all(runner, probe.id)
    (compacted, *_) = [n for n in await store.list_notes(probe.id) if n.kind is NoteKind.COMPACTED]
    turns = await store.list_turns(probe.id)
    before = sum(t.usage.total_tokens for t in turns if t.seq < compacted.before_seq)

    async def run(limit: int) -> Dialogue:
        long_replies(server, compacted.before_seq)  # it stops there, and leaves none for the next run
        spec = tiny_spec(ContextPolicy.COMPACT, summary_model=GLM)
        dialogue = await runner.create(replace(spec, limits=replace(spec.limits, max_total_tokens=limit)))
        return (await run_all(runner, dialogue.id))[-1].dialogue

    refused = await run(before + 701)  # room for any one turn of the tiny model, not for a summary
    needed = int(re.findall(r"could use ([\d,]+) tokens", refused.stop_detail)[0].replace(",", ""))
    drop = Reply(text=" ".join(["word"] * 200), chunk_words=10, drop_after_chunks=15)
    server.enqueue_for(GLM, drop, Reply(text="never asked for"))
    asked = len(server.chat_requests)
    final = await run(before + needed + 10)
    assert final.stop_reason is StopReason.PROVIDER_ERROR, final.stop_detail
    assert final.stop_detail.startswith("the summary call failed: ")
    assert final.stop_detail.endswith("; the token limit left no room to retry")
    assert [r.body["model"] for r in server.chat_requests[asked:]].count(GLM) == 1
    [bill] = [n for n in await store.list_notes(final.id) if n.kind is NoteKind.BILLING]
    assert bill.usage.completion_tokens >= 150
    assert final.totals.total_tokens == before + bill.usage.total_tokens


async def test_an_unknown_summary_model_is_refused_before_anything_is_spent(runner, server):
    with pytest.raises(UnknownModel, match="nope/model"):
        await runner.create(tiny_spec(ContextPolicy.COMPACT, summary_model="nope/model"))
    assert server.chat_requests == []


async def test_a_named_server_gets_plain_messages_whatever_the_model_is_called(
    provider, server, store, clock, sleep
):
    route = Route(provider, Catalogue(provider, store, timedelta(hours=1), clock))
    router = Router(route, {"lab": route})
    runner = DialogueRunner(store, router, clock, max_rounds=10, max_budget=Decimal(1), sleep=sleep)
    spec = make_spec(rounds=2)
    first = replace(spec.participants[0], provider="lab")
    dialogue = await runner.create(replace(spec, participants=(first, spec.participants[1])))
    await run_all(runner, dialogue.id)
    opus = [r.body for r in server.chat_requests if r.body["model"] == OPUS]
    assert opus and all(marks(b["messages"]) == [] for b in opus)
