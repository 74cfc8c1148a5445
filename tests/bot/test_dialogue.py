"""The dialogue engine: turn order, role flipping, every stop reason, retries, stop/pause/resume."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from bot.budget import format_usd
from bot.call import reply_limit
from bot.control import Control
from bot.errors import InputError, StateError, UnknownModel
from bot.events import Delta, TurnFinished, TurnRestarted, TurnStarted
from bot.models import Status, StopReason, TurnStatus
from bot.providers.openai_compat import MAX_EVENT_BYTES, OpenAICompatProvider
from bot.providers.scripted import ScriptedProvider, ScriptedReply, free_models
from bot.transcript import render_markdown
from tests.conftest import GLM, OPUS, make_spec, run_all
from tests.fake_openrouter import Reply, plain

pytestmark = pytest.mark.backends("sqlite", "postgres")


def ended(events):
    return events[-1].dialogue


async def test_two_models_alternate_for_the_given_rounds(runner, store, server):
    """Three rounds: six turns, A then B each round, committed with the server's usage and cost."""
    dialogue = await runner.create(make_spec(rounds=3))
    events = await run_all(runner, dialogue.id)
    final = ended(events)
    assert final.status is Status.FINISHED and final.stop_reason is StopReason.MAX_ROUNDS
    turns = await store.list_turns(dialogue.id)
    assert [(t.round, t.seat) for t in turns] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert [r.body["model"] for r in server.chat_requests] == [OPUS, GLM] * 3
    assert all(t.status is TurnStatus.OK and t.text.startswith("Reply ") for t in turns)
    assert final.totals.spent_usd == sum(server.reported_costs)
    assert sum(t.cost_usd for t in turns) == sum(server.reported_costs)


async def test_each_model_sees_its_own_turns_as_assistant_and_the_other_as_user(runner, store, server):
    dialogue = await runner.create(make_spec(rounds=2, systems=("You are A.", "You are B.")))
    await run_all(runner, dialogue.id)
    turns = await store.list_turns(dialogue.id)
    a1, b1, a2, b2 = (t.text for t in turns)
    opening = dialogue.opening
    seen = [plain(r.body["messages"]) for r in server.chat_requests]
    assert seen[0] == [
        {"role": "system", "content": "You are A."},
        {"role": "user", "content": opening},
    ]
    assert seen[1] == [
        {"role": "system", "content": "You are B."},
        {"role": "user", "content": f"{opening}\n\n{a1}"},
    ]
    assert seen[2] == [
        {"role": "system", "content": "You are A."},
        {"role": "user", "content": opening},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": b1},
    ]
    assert seen[3] == [
        {"role": "system", "content": "You are B."},
        {"role": "user", "content": f"{opening}\n\n{a1}"},
        {"role": "assistant", "content": b1},
        {"role": "user", "content": a2},
    ]
    assert b2


async def test_three_participants_take_turns_and_see_names(make_runner):
    provider = ScriptedProvider(free_models(["x/a", "x/b", "x/c"]))
    runner = make_runner(provider)
    dialogue = await runner.create(make_spec("x/a", "x/b", "x/c", rounds=2))
    await run_all(runner, dialogue.id)
    assert [c.model for c in provider.calls] == ["x/a", "x/b", "x/c"] * 2
    last = provider.calls[-1].messages
    assert last[-1]["role"] == "user" and last[-1]["content"].startswith("a: ")
    assert "\n\nb: " in last[-1]["content"]


async def test_stream_is_yielded_as_it_arrives(runner, server):
    # Pieces a moment apart come one by one; pieces that arrive together travel together.
    server.enqueue(
        Reply(text="one two three four five six seven eight nine", chunk_words=2, chunk_delay=0.05)
    )
    dialogue = await runner.create(make_spec(rounds=1))
    events = await run_all(runner, dialogue.id)
    deltas = [e.text for e in events if isinstance(e, Delta) and e.seq == 0]
    assert len(deltas) == 5
    assert "".join(deltas) == "one two three four five six seven eight nine"


# Budget -----------------------------------------------------------------------------------------


async def test_budget_stops_before_a_call_that_could_pass_it(runner, store, server):
    """The cap is predictive: the call that might overspend is never sent."""
    # Opus reserves ~200 × $0.000025 = $0.005 per turn plus the prompt; $0.012 fits two turns at most.
    dialogue = await runner.create(make_spec(rounds=10, budget="0.012"))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.BUDGET and final.status is Status.FINISHED
    assert "could cost up to" in final.stop_detail
    assert final.totals.spent_usd <= Decimal("0.012")
    turns = await store.list_turns(dialogue.id)
    assert len(server.chat_requests) == len(turns) >= 2


async def test_budget_too_small_for_the_first_call_is_refused_before_anything_is_stored(runner, store):
    with pytest.raises(InputError, match="below the worst case of the first call"):
        await runner.create(make_spec(budget="0.0001"))
    assert await store.list_dialogues() == []


async def test_cost_is_computed_from_prices_when_the_server_reports_none(runner, store, server):
    server.enqueue(Reply(text="Hello back", usage={"prompt_tokens": 100, "completion_tokens": 10}))
    dialogue = await runner.create(make_spec(OPUS, GLM, rounds=1))
    await run_all(runner, dialogue.id)
    first = (await store.list_turns(dialogue.id))[0]
    assert first.cost_source == "computed"
    assert first.cost_usd == 100 * Decimal("0.000005") + 10 * Decimal("0.000025")


# Retries --------------------------------------------------------------------------------------


async def test_rate_limit_is_retried_after_retry_after_and_recorded_once(runner, store, server, sleep):
    server.enqueue(
        Reply(
            status=429,
            headers={"Retry-After": "3"},
            error={"error": {"code": 429, "message": "slow down"}},
        )
    )
    dialogue = await runner.create(make_spec(rounds=1))
    events = await run_all(runner, dialogue.id)
    assert sleep.delays == [3.0]
    assert [e.attempt for e in events if isinstance(e, TurnRestarted)] == [2]
    turns = await store.list_turns(dialogue.id)
    assert len(turns) == 2 and turns[0].attempts == 2
    assert ended(events).totals.spent_usd == sum(server.reported_costs)


async def test_server_errors_back_off_exponentially_then_succeed(runner, store, server, sleep):
    """Two 502s then success: backoff grows (1 s, 2 s plus jitter) and the turn is billed once."""
    error = {"error": {"code": 502, "message": "bad gateway"}}
    server.enqueue(Reply(status=502, error=error), Reply(status=502, error=error))
    dialogue = await runner.create(make_spec(rounds=1))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.MAX_ROUNDS
    assert 1.0 <= sleep.delays[0] <= 1.5 and 2.0 <= sleep.delays[1] <= 3.0
    assert (await store.list_turns(dialogue.id))[0].attempts == 3
    assert final.totals.spent_usd == sum(server.reported_costs)


async def test_partial_reply_then_drop_is_retried_and_only_the_retry_is_kept(runner, store, server):
    server.enqueue(
        Reply(text="this partial text is lost", drop_after_chunks=1),
        Reply(text="The complete reply."),
    )
    dialogue = await runner.create(make_spec(rounds=1))
    events = await run_all(runner, dialogue.id)
    assert any(isinstance(e, TurnRestarted) and "dropped" in e.reason for e in events)
    assert (await store.list_turns(dialogue.id))[0].text == "The complete reply."


async def test_a_stream_that_ends_in_finish_reason_error_alone_is_a_failed_try_not_a_reply(
    runner, store, server
):
    # OpenRouter sends an error object with it; a server that sends only the finish reason has
    # still said the reply failed, and its half is not the model's answer.
    server.enqueue(Reply(text="Half a thou", finish_reason="error"), Reply(text="The complete reply."))
    dialogue = await runner.create(make_spec(rounds=1))
    events = await run_all(runner, dialogue.id)
    (restart,) = [e for e in events if isinstance(e, TurnRestarted)]
    assert restart.reason == "the model failed mid-reply: the stream ended with finish_reason error"
    first = (await store.list_turns(dialogue.id))[0]
    assert first.text == "The complete reply." and first.attempts == 2
    assert not any("Half a thou" in str(r.body["messages"]) for r in server.chat_requests)


def _dropped(server):
    """The generations the fake server began and never finished, in order."""
    return [g for g, record in server.generations.items() if not record["finished"]]


async def test_a_reply_cut_off_by_a_dropped_connection_is_charged_before_it_is_retried(runner, store, server):
    # The provider took the call and wrote two words before the connection dropped: it bills them.
    server.enqueue(
        Reply(text="this partial text is lost", chunk_words=1, drop_after_chunks=2, chunk_delay=0.02),
        Reply(text="The complete reply."),
    )
    dialogue = await runner.create(make_spec(rounds=1))
    final = ended(await run_all(runner, dialogue.id))
    (dropped,) = _dropped(server)
    assert server.generation_lookups == [dropped]
    billed = server.generations[dropped]["total_cost"]
    turn = (await store.list_turns(dialogue.id))[0]
    assert turn.status is TurnStatus.OK and turn.text == "The complete reply." and turn.attempts == 2
    assert 0 < billed and turn.cost_usd == billed + server.reported_costs[0]
    assert final.totals.spent_usd == billed + sum(server.reported_costs)
    markdown = render_markdown(*await store.history(dialogue.id))
    assert "attempt 1 failed after the provider took it (the connection to" in markdown
    assert f"charged {format_usd(billed)} (reported)" in markdown


async def test_a_reply_named_only_in_its_stream_is_charged_what_it_cost_when_cut_off(runner, store, server):
    # No X-Generation-Id header (a proxy that drops it): the first event's id names the call, so
    # the dropped try is asked about and charged its cost, not its whole reservation.
    server.enqueue(
        Reply(text="this partial text is lost", chunk_words=1, drop_after_chunks=2, id_header=False),
        Reply(text="The complete reply."),
    )
    dialogue = await runner.create(make_spec(rounds=1))
    reserved = next(e for e in await run_all(runner, dialogue.id) if isinstance(e, TurnStarted)).reserved
    (dropped,) = _dropped(server)
    assert server.generation_lookups == [dropped]
    billed = server.generations[dropped]["total_cost"]
    turn = (await store.list_turns(dialogue.id))[0]
    assert 0 < billed < reserved and turn.cost_usd == billed + server.reported_costs[0]


async def test_a_call_that_fails_before_the_provider_takes_it_is_not_charged(runner, store, server):
    error = {"error": {"code": 503, "message": "overloaded"}}
    server.enqueue(Reply(status=503, error=error), Reply(text="The complete reply."))
    dialogue = await runner.create(make_spec(rounds=1))
    final = ended(await run_all(runner, dialogue.id))
    assert server.generation_lookups == [] and final.totals.spent_usd == sum(server.reported_costs)


async def test_every_try_the_provider_took_is_charged_when_the_last_fails_too(runner, store, server, sleep):
    drop = Reply(text="words that never finish", chunk_words=1, drop_after_chunks=2, chunk_delay=0.02)
    server.enqueue(drop, drop, drop)
    dialogue = await runner.create(make_spec(rounds=2))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.PROVIDER_ERROR and "dropped" in final.stop_detail
    assert len(sleep.delays) == 2 and len(_dropped(server)) == 3
    billed = sum(server.generations[g]["total_cost"] for g in _dropped(server))
    # The money is on record with the turn it was spent on, never silently: a cut-off turn.
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and turn.attempts == 3
    assert 0 < billed == turn.cost_usd == final.totals.spent_usd
    markdown = render_markdown(*await store.history(dialogue.id))
    assert (
        f"✂ Cut off before the reply finished; the provider billed what was written ({format_usd(billed)})"
        in markdown
    )
    assert markdown.count("failed after the provider took it") == 3


async def test_a_retry_the_budget_cannot_cover_after_a_billed_drop_is_not_made(runner, store, server):
    # The first call's worst case is the whole budget: once the dropped try is charged, another
    # try's worst case no longer fits, so none is made.
    server.enqueue(Reply(text="The complete reply."))
    probe = await runner.create(make_spec(rounds=1))
    worst = next(e for e in await run_all(runner, probe.id) if isinstance(e, TurnStarted)).reserved
    server.enqueue(
        Reply(text="this partial text is lost", chunk_words=1, drop_after_chunks=2, chunk_delay=0.02),
        Reply(text="never asked for"),
    )
    asked = len(server.chat_requests)
    dialogue = await runner.create(make_spec(rounds=1, budget=str(worst)))
    final = ended(await run_all(runner, dialogue.id))
    assert len(server.chat_requests) == asked + 1
    assert final.stop_reason is StopReason.PROVIDER_ERROR
    assert final.stop_detail.endswith("; the budget left no room to retry")
    (dropped,) = _dropped(server)
    assert final.totals.spent_usd == server.generations[dropped]["total_cost"] <= worst


async def test_a_stop_while_waiting_to_retry_charges_nothing_for_a_call_never_taken(runner, store, server):
    error = {"error": {"code": 503, "message": "overloaded"}}
    server.enqueue(Reply(status=503, error=error))
    control = Control()

    async def stop_in_the_wait(delay):
        control.stop(now=True)

    runner.player._sleep = stop_in_the_wait
    dialogue = await runner.create(make_spec(rounds=1))
    events = [e async for e in runner.run(dialogue.id, control)]
    final = ended(events)
    assert final.stop_reason is StopReason.USER_STOP and final.totals.spent_usd == 0
    assert await store.list_turns(dialogue.id) == [] and len(server.chat_requests) == 1


async def test_three_failures_stop_the_dialogue_with_provider_error(runner, store, server, sleep):
    error = {"error": {"code": 503, "message": "overloaded"}}
    server.enqueue(*(Reply(status=503, error=error) for _ in range(3)))
    dialogue = await runner.create(make_spec(rounds=2))
    final = ended(await run_all(runner, dialogue.id))
    assert final.status is Status.FAILED and final.stop_reason is StopReason.PROVIDER_ERROR
    assert "overloaded" in final.stop_detail
    assert len(sleep.delays) == 2 and len(server.chat_requests) == 3
    assert await store.list_turns(dialogue.id) == []
    assert final.totals.spent_usd == 0


@pytest.mark.parametrize("status", [400, 401, 402, 403])
async def test_client_errors_are_never_retried(runner, server, sleep, status):
    server.enqueue(Reply(status=status, error={"error": {"code": status, "message": "no"}}))
    dialogue = await runner.create(make_spec(rounds=1))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.PROVIDER_ERROR
    assert sleep.delays == [] and len(server.chat_requests) == 1


# Empty replies --------------------------------------------------------------------------------


async def test_empty_reply_is_retried_once_with_twice_the_room(runner, store, server):
    server.enqueue(
        Reply(text="", reasoning="so much thinking", finish_reason="length"), Reply(text="Hearth.")
    )
    dialogue = await runner.create(make_spec(rounds=1, max_tokens=200))
    final = ended(await run_all(runner, dialogue.id))
    assert [r.body["max_tokens"] for r in server.chat_requests[:2]] == [200, 400]
    first = (await store.list_turns(dialogue.id))[0]
    assert first.status is TurnStatus.OK and first.text == "Hearth." and first.attempts == 2
    # Both calls were billed, so both are counted.
    assert first.cost_usd == sum(server.reported_costs[:2])
    assert final.totals.spent_usd == sum(server.reported_costs)


async def test_empty_twice_is_recorded_visibly_and_stops(runner, store, server):
    empty = Reply(text="", reasoning="thinking", finish_reason="length")
    server.enqueue(Reply(text="One word?"), empty, empty)
    dialogue = await runner.create(make_spec(rounds=3))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.EMPTY_REPLY and final.status is Status.FAILED
    turns = await store.list_turns(dialogue.id)
    assert [t.status for t in turns] == [TurnStatus.OK, TurnStatus.EMPTY]
    assert turns[1].usage.completion_tokens > 0 and turns[1].cost_usd > 0
    assert "finish_reason=length" in final.stop_detail


async def test_empty_reply_without_budget_for_a_retry_stops_at_once(runner, store, server):
    server.enqueue(Reply(text="", finish_reason="length"))
    dialogue = await runner.create(make_spec(rounds=1, budget="0.006"))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.EMPTY_REPLY
    assert "no room to retry" in final.stop_detail
    assert len(server.chat_requests) == 1


async def test_a_retry_that_could_pass_the_token_limit_after_a_billed_drop_is_not_made(runner, store, server):
    # 280 words came before the connection dropped: they count toward the limit as their cost does,
    # and another call of up to 300 tokens beside them could pass the 599 allowed.
    words = " ".join(["word"] * 400)
    server.enqueue(
        Reply(text=words, chunk_words=20, drop_after_chunks=14, chunk_delay=0.01),
        Reply(text="never asked for"),
    )
    dialogue = await runner.create(make_spec(rounds=1, max_tokens=300, max_total_tokens=599))
    final = ended(await run_all(runner, dialogue.id))
    assert len(server.chat_requests) == 1
    assert final.stop_reason is StopReason.PROVIDER_ERROR
    assert final.stop_detail.endswith("; the token limit left no room to retry")
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and turn.usage.completion_tokens >= 280
    assert turn.usage.prompt_tokens + turn.usage.completion_tokens == final.totals.total_tokens <= 599


async def test_an_empty_reply_is_not_retried_past_the_token_limit(runner, store, server):
    server.enqueue(Reply(text="", finish_reason="length"), Reply(text="never asked for"))
    dialogue = await runner.create(make_spec(rounds=1, max_tokens=300, max_total_tokens=599))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.EMPTY_REPLY and len(server.chat_requests) == 1
    assert final.stop_detail.endswith("(finish_reason=length); the token limit left no room to retry")


# Other limits ---------------------------------------------------------------------------------


async def test_token_limit_stops_before_the_call_that_could_pass_it(runner, store, server):
    dialogue = await runner.create(make_spec(rounds=10, max_total_tokens=1000))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.TOKENS
    assert final.totals.total_tokens <= 1000
    assert len(await store.list_turns(dialogue.id)) >= 1


async def test_a_token_limit_that_cannot_hold_the_first_call_is_refused_before_anything_is_spent(
    runner, store, server
):
    # A reply of up to 300 tokens and any prompt do not fit under 250: the run would stop before its
    # first call, having made a dialogue for nothing.
    with pytest.raises(InputError, match=r"^the token limit of 250 cannot hold the first call \(its prompt"):
        await runner.create(make_spec(rounds=1, max_tokens=300, max_total_tokens=250))
    assert server.chat_requests == [] and await store.list_dialogues() == []


async def test_context_limit_stops_when_the_history_would_not_fit(runner, store):
    dialogue = await runner.create(make_spec("tiny/short-context", GLM, rounds=20, max_tokens=100))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.CONTEXT_LIMIT
    assert "exceed tiny/short-context's 700" in final.stop_detail


async def test_time_limit_cuts_the_stream_and_charges_what_the_provider_billed(runner, store, server):
    server.enqueue(Reply(text="slow " * 40, chunk_delay=0.05, chunk_words=1))
    dialogue = await runner.create(make_spec(rounds=2, max_seconds=0.3))
    events = await run_all(runner, dialogue.id)
    final = ended(events)
    assert final.stop_reason is StopReason.TIME
    (turn,) = await store.list_turns(dialogue.id)
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert turn.status is TurnStatus.CANCELLED and turn.text.startswith("slow")
    # The cut-off call is looked up by its generation id and charged what the server says it cost.
    assert server.generation_lookups == [turn.generation_id]
    record = server.generations[turn.generation_id]
    assert (turn.cost_usd, turn.cost_source) == (record["total_cost"], "reported")
    assert 0 < turn.cost_usd < started.reserved and final.totals.spent_usd == turn.cost_usd
    markdown = render_markdown(*await store.history(dialogue.id))
    assert f"the provider billed what was written ({format_usd(turn.cost_usd)})" in markdown
    # The provider reports usage; only this call was cut off before it could: no note says otherwise.
    assert "reports no token usage" not in markdown and "upper bound" not in markdown


async def test_a_cut_off_call_the_provider_cannot_account_for_is_charged_its_worst_case(
    runner, store, server, monkeypatch
):
    monkeypatch.setattr(OpenAICompatProvider, "LOOKUP_WAITS", (0.0, 0.0))
    server.lookups_until_ready = 10  # the record never appears in time
    server.enqueue(Reply(text="slow " * 40, chunk_delay=0.05, chunk_words=1))
    dialogue = await runner.create(make_spec(rounds=2, max_seconds=0.3))
    events = await run_all(runner, dialogue.id)
    (turn,) = await store.list_turns(dialogue.id)
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert len(server.generation_lookups) == 3  # asked, and asked again, before giving up
    assert (turn.cost_usd, turn.cost_source) == (started.reserved, "reserved")


async def test_a_generation_record_that_comes_late_is_still_used(runner, store, server, monkeypatch):
    monkeypatch.setattr(OpenAICompatProvider, "LOOKUP_WAITS", (0.0, 0.0, 0.0))
    server.lookups_until_ready = 2
    server.enqueue(Reply(text="slow " * 40, chunk_delay=0.05, chunk_words=1))
    dialogue = await runner.create(make_spec(rounds=2, max_seconds=0.3))
    await run_all(runner, dialogue.id)
    (turn,) = await store.list_turns(dialogue.id)
    assert len(server.generation_lookups) == 3 and turn.cost_source == "reported"


# Stop, pause, resume --------------------------------------------------------------------------


async def test_stop_ends_after_the_turn_in_flight_and_is_sticky(runner, store, server):
    control = Control()
    dialogue = await runner.create(make_spec(rounds=5))
    events = []
    async for event in runner.run(dialogue.id, control):
        events.append(event)
        if isinstance(event, Delta):
            control.stop()
    final = ended(events)
    assert final.status is Status.STOPPED and final.stop_reason is StopReason.USER_STOP
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.OK
    with pytest.raises(StateError, match="has ended"):
        await run_all(runner, dialogue.id)
    assert len(server.chat_requests) == 1


async def test_stop_now_cancels_the_stream_at_once(runner, store, server):
    server.enqueue(Reply(text="word " * 200, chunk_delay=0.02, chunk_words=1))
    control = Control()
    dialogue = await runner.create(make_spec(rounds=5))
    events = []
    async for event in runner.run(dialogue.id, control):
        events.append(event)
        if isinstance(event, Delta) and len([e for e in events if isinstance(e, Delta)]) == 3:
            control.stop(now=True)
    final = ended(events)
    assert final.stop_reason is StopReason.USER_STOP
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and turn.text == "word word word "
    assert final.totals.spent_usd == turn.cost_usd > 0


async def test_a_reply_far_past_its_max_tokens_is_cut_off_billed_and_kept_bounded(runner, store, server):
    """An endpoint that ignores max_tokens (a runaway local server, a hostile one) would stream until
    the time limit, the whole reply held in memory. It is cut off once it is longer than any
    tokenizer makes that many tokens, billed as a stop is, and the dialogue says why."""
    limit = reply_limit(20)
    server.enqueue(Reply(text="runaway " * (limit // 4), chunk_words=50, chunk_delay=0.01))
    dialogue = await runner.create(make_spec(rounds=3, max_tokens=20))
    final = ended(await run_all(runner, dialogue.id))
    assert final.status is Status.FAILED and final.stop_reason is StopReason.PROVIDER_ERROR
    assert final.stop_detail == (
        f"anthropic/claude-opus-4.6 sent more than {limit:,} characters for a reply capped at 20 tokens; "
        "it was cut off there"
    )
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED
    assert 0 < len(turn.text) <= limit and turn.text.startswith("runaway runaway")
    assert final.totals.spent_usd == turn.cost_usd > 0  # billed: the provider generated it
    assert len(server.chat_requests) == 1  # not retried
    assert server.generations["gen-1"]["finished"] is False  # the stream was left, not read out


async def test_an_event_that_never_ends_fails_the_call_in_one_line(runner, store, server):
    """A server that does not speak the stream format, or sends one unbroken line, would be held in
    memory whole and scanned again at every read; past MAX_EVENT_BYTES the call fails instead."""
    server.enqueue(Reply(unended_bytes=MAX_EVENT_BYTES + 2**20))
    dialogue = await runner.create(make_spec(rounds=2))
    final = ended(await run_all(runner, dialogue.id))
    assert final.status is Status.FAILED and final.stop_reason is StopReason.PROVIDER_ERROR
    assert final.stop_detail == (
        f"the stream from {server.base_url} sent over 4 MiB without ending an event; it does not speak "
        "OpenAI's stream format, so check the base URL"
    )
    assert len(server.chat_requests) == 1  # the same server would send the same again
    # The server took the call (it named it): what its record says it cost is charged, on record.
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and turn.text == ""
    billed = server.generations[turn.generation_id]["total_cost"]
    assert 0 < billed == turn.cost_usd == final.totals.spent_usd


async def test_pause_then_resume_continues_without_losing_or_repeating_a_turn(runner, store, server):
    control = Control()
    dialogue = await runner.create(make_spec(rounds=2))
    async for event in runner.run(dialogue.id, control):
        if isinstance(event, TurnFinished):
            control.pause()
    assert (await store.get_dialogue(dialogue.id)).status is Status.PAUSED
    assert len(await store.list_turns(dialogue.id)) == 1
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.MAX_ROUNDS
    turns = await store.list_turns(dialogue.id)
    assert [t.seq for t in turns] == [0, 1, 2, 3]
    assert len(server.chat_requests) == 4


async def test_extend_adds_rounds_to_a_running_dialogue(runner, store, server):
    dialogue = await runner.create(make_spec(rounds=1))
    async for event in runner.run(dialogue.id):
        if isinstance(event, TurnFinished) and event.turn.seq == 0:
            await runner.extend(dialogue.id, 1)
    assert len(await store.list_turns(dialogue.id)) == 4


async def test_extend_reopens_a_dialogue_that_ran_out_of_rounds_but_not_a_stopped_one(runner, store):
    dialogue = await runner.create(make_spec(rounds=1))
    await run_all(runner, dialogue.id)
    reopened = await runner.extend(dialogue.id, 2)
    assert reopened.status is Status.PAUSED and reopened.limits.max_rounds == 3
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.MAX_ROUNDS
    assert len(await store.list_turns(dialogue.id)) == 6
    with pytest.raises(InputError, match="at most 50 rounds"):
        await runner.extend(dialogue.id, 48)
    control = Control()
    control.stop()
    other = await runner.create(make_spec(rounds=1))
    await run_all(runner, other.id, control)
    with pytest.raises(StateError, match="has ended"):
        await runner.extend(other.id, 1)


async def test_a_stop_can_record_why_it_happened(runner, store, server):
    server.enqueue(Reply(text="word " * 100, chunk_delay=0.01, chunk_words=1))
    control = Control()
    dialogue = await runner.create(make_spec(rounds=2))
    async for event in runner.run(dialogue.id, control):
        if isinstance(event, Delta):
            control.stop(now=True, reason=StopReason.THREAD_GONE, detail="thread 7 was deleted")
    final = await store.get_dialogue(dialogue.id)
    assert final.status is Status.FAILED and final.stop_reason is StopReason.THREAD_GONE
    assert final.stop_detail == "thread 7 was deleted"


async def test_a_dialogue_cannot_run_twice_at_once(runner, store, server):
    dialogue = await runner.create(make_spec(rounds=1))
    first = runner.run(dialogue.id)
    await anext(first)
    with pytest.raises(StateError, match="already running"):
        await anext(runner.run(dialogue.id))
    rest = [e async for e in first]
    assert rest[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    assert len(await store.list_turns(dialogue.id)) == 2


async def test_resume_charges_a_call_left_in_flight_by_a_crash(runner, store, server):
    """A process killed mid-call leaves its reservation on record; resuming charges it, then goes on."""
    dialogue = await runner.create(make_spec(rounds=1))
    await store.mark_running(dialogue.id, dialogue.created_at)
    await store.begin_call(dialogue.id, 0, Decimal("0.004"), dialogue.created_at)
    final = ended(await run_all(runner, dialogue.id))
    assert final.totals.interrupted_calls == 1
    assert final.totals.spent_usd == Decimal("0.004") + sum(server.reported_costs)


async def test_resume_after_a_crash_during_a_retry_charges_the_billed_tries_and_the_retry(
    runner, store, server
):
    """A crash while a turn's retry streams: the earlier try was billed, and the provider's record
    of the retry covers the retry alone. Both are charged, and the retry's record as the provider
    kept it, not its reservation."""
    dialogue = await runner.create(make_spec(rounds=1))
    await store.mark_running(dialogue.id, dialogue.created_at)
    await store.begin_call(dialogue.id, 0, Decimal("0.004"), dialogue.created_at, billed=Decimal("0.0015"))
    record = {
        "model": OPUS,
        "prompt_tokens": 9,
        "streamed": 3,
        "finished": False,
        "total_cost": Decimal("0.0007"),
    }
    server.generations["gen-retry"] = record
    await store.note_generation(dialogue.id, 0, "gen-retry")
    final = ended(await run_all(runner, dialogue.id))
    assert server.generation_lookups == ["gen-retry"]
    assert final.totals.interrupted_calls == 1
    assert final.totals.spent_usd == Decimal("0.0015") + Decimal("0.0007") + sum(server.reported_costs)


# Validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rounds": 0}, "rounds must be between 1 and 50"),
        ({"rounds": 51}, "rounds must be between 1 and 50"),
        ({"budget": "0"}, "budget must be above"),
        ({"budget": "-1"}, "budget must be above"),
        ({"budget": "11"}, "at most \\$10"),
        ({"opening": "   "}, "opening message is empty"),
        ({"max_tokens": 5}, "max_tokens must be at least 16"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_stored(runner, store, server, changes, message):
    with pytest.raises(InputError, match=message):
        await runner.create(make_spec(**changes))
    assert await store.list_dialogues() == []
    assert server.chat_requests == []


async def test_unknown_model_names_the_closest_match(runner, store, server):
    with pytest.raises(UnknownModel, match="did you mean z-ai/glm-5"):
        await runner.create(make_spec(OPUS, "z-ai/glm5"))
    assert await store.list_dialogues() == [] and server.chat_requests == []


async def test_one_participant_is_not_a_dialogue(runner):
    with pytest.raises(InputError, match="2 to 8 participants"):
        await runner.create(make_spec(OPUS))


async def test_scripted_provider_records_each_call(make_runner):
    provider = ScriptedProvider(free_models([OPUS, GLM]), fallback=None)
    provider.enqueue("first", ScriptedReply(text="second"))
    runner = make_runner(provider)
    dialogue = await runner.create(make_spec(rounds=1))
    final = ended(await run_all(runner, dialogue.id))
    assert final.stop_reason is StopReason.MAX_ROUNDS
    assert [c.model for c in provider.calls] == [OPUS, GLM]
    assert isinstance(asyncio.get_running_loop(), asyncio.AbstractEventLoop)


async def test_stop_now_closes_the_provider_connection_within_a_second(runner, store, server):
    """Measured at the server: once a stop cuts the reply off, no further word is streamed (and
    billed) more than a second later, although the reply had seconds still to go."""
    server.enqueue(Reply(text="word " * 200, chunk_delay=0.02, chunk_words=1))
    dialogue = await runner.create(make_spec(rounds=2))
    control = Control()
    events = []
    loop = asyncio.get_running_loop()
    stopped_at = 0.0

    def stop() -> None:  # from outside the run, as Ctrl-C or a Stop button would
        nonlocal stopped_at
        stopped_at = loop.time()
        control.stop(now=True)

    async for event in runner.run(dialogue.id, control):
        events.append(event)
        if isinstance(event, Delta) and not stopped_at:
            loop.call_later(0.1, stop)
    (record,) = server.generations.values()
    await asyncio.sleep(max(0.0, stopped_at + 1.0 - asyncio.get_running_loop().time()))
    streamed = record["streamed"]
    await asyncio.sleep(0.5)
    assert record["streamed"] == streamed < 50 and not record["finished"]
    assert ended(events).stop_reason is StopReason.USER_STOP
