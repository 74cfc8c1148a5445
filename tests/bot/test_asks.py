"""Any process may stop or pause a dialogue another process runs, or give a person's words for
their turn: the ask waits in the database, and the process that holds the dialogue's lease takes
it within a second."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot import dialogue as dialogue_module
from bot.errors import StateError
from bot.events import AwaitingHuman, Delta, Ended
from bot.models import Ask, Status, StopReason, TurnStatus
from bot.providers.openai_compat import OpenAICompatProvider
from bot.store import Store
from tests.bot.test_people import with_human
from tests.conftest import API_KEY, build_runner, make_spec
from tests.fake_openrouter import Reply

# A first reply long enough (50 words, 50 ms apart) that an ask taken within a second lands in it.
LONG = Reply(text=" ".join(["word"] * 50), chunk_words=1, chunk_delay=0.05, keepalives=0)


pytestmark = pytest.mark.backends("sqlite", "postgres")


@pytest.fixture
async def two_processes(database, server, http, clock, sleep):
    """Two engines on one database, as two processes would be (each Store is its own owner)."""
    provider = OpenAICompatProvider(http, server.base_url, API_KEY)
    async with Store.open(database) as here, Store.open(database) as there:
        yield build_runner(here, provider, clock, sleep), build_runner(there, provider, clock, sleep)


async def run_until_asked(here, there, action: Ask, server) -> tuple[list, bool]:
    """Run a dialogue here; once its first reply is streaming, ask `action` of it from there."""
    server.enqueue(LONG)
    dialogue = await here.create(make_spec(rounds=3))
    events, asked = [], None
    async for event in here.run(dialogue.id):
        events.append(event)
        if asked is None and isinstance(event, Delta):
            asked = asyncio.create_task(there.ask(dialogue.id, action))
    assert asked is not None
    return events, await asked


async def test_a_stop_asked_from_another_process_ends_the_dialogue_after_the_turn_in_flight(
    two_processes, server
):
    here, there = two_processes
    events, left_for_the_runner = await run_until_asked(here, there, Ask.STOP, server)
    assert left_for_the_runner
    ended = events[-1]
    assert isinstance(ended, Ended) and ended.dialogue.stop_reason is StopReason.USER_STOP
    assert ended.dialogue.stop_detail == "stopped from another process"
    turns = await there.store.list_turns(ended.dialogue.id)
    assert [t.status for t in turns] == [TurnStatus.OK]  # the turn in flight, whole; no other


@pytest.mark.backends("postgres")
async def test_on_postgresql_an_ask_wakes_the_runner_without_waiting_for_its_next_look(
    two_processes, server, monkeypatch
):
    """NOTIFY carries the ask: with the runner's own look put off for an hour, the stop still
    lands after the turn in flight (polling alone would let all six turns run first)."""
    monkeypatch.setattr(dialogue_module, "ASK_SECONDS", 3600.0)
    here, there = two_processes
    events, left_for_the_runner = await run_until_asked(here, there, Ask.STOP, server)
    assert left_for_the_runner
    ended = events[-1]
    assert isinstance(ended, Ended) and ended.dialogue.stop_reason is StopReason.USER_STOP
    turns = await there.store.list_turns(ended.dialogue.id)
    assert [t.status for t in turns] == [TurnStatus.OK]


async def test_a_stop_now_from_another_process_cuts_the_reply_in_flight(two_processes, server):
    here, there = two_processes
    events, _ = await run_until_asked(here, there, Ask.STOP_NOW, server)
    ended = events[-1]
    assert isinstance(ended, Ended) and ended.dialogue.stop_reason is StopReason.USER_STOP
    (turn,) = await there.store.list_turns(ended.dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and 0 < len(turn.text.split()) < 50


async def test_a_pause_from_another_process_pauses_after_the_turn_and_resume_goes_on(two_processes, server):
    here, there = two_processes
    events, _ = await run_until_asked(here, there, Ask.PAUSE, server)
    dialogue = events[-1].dialogue
    assert dialogue.status is Status.PAUSED
    assert len(await there.store.list_turns(dialogue.id)) == 1
    resumed = [e async for e in there.run(dialogue.id)]  # the other process picks it up
    assert resumed[-1].dialogue.status is Status.FINISHED
    assert len(await here.store.list_turns(dialogue.id)) == 6


async def test_a_dialogue_no_process_runs_is_stopped_where_it_was_asked(two_processes):
    here, there = two_processes
    dialogue = await here.create(make_spec(rounds=3))
    with pytest.raises(
        StateError, match=f"dialogue {dialogue.id} is not running \\(pending\\); nothing to pause"
    ):
        await there.ask(dialogue.id, Ask.PAUSE)
    assert not await there.ask(dialogue.id, Ask.STOP)
    stopped = await here.store.get_dialogue(dialogue.id)
    assert stopped.stop_reason is StopReason.USER_STOP and await here.store.list_turns(dialogue.id) == []
    with pytest.raises(StateError, match="has ended \\(stopped by the user\\); there is nothing to stop"):
        await there.ask(dialogue.id, Ask.STOP)
    with pytest.raises(StateError, match="has ended \\(stopped by the user\\); there is nothing to pause"):
        await there.ask(dialogue.id, Ask.PAUSE)


async def test_a_stop_the_dead_process_never_took_is_done_by_the_process_that_takes_over(
    two_processes, server
):
    """A member pressed Stop; the process running the dialogue died before it looked. The worker
    that takes the dialogue over once the lease lapses must stop it, not carry on spending."""
    here, there = two_processes
    dialogue = await here.create(make_spec(rounds=1))
    await here.store.take_lease(dialogue.id, 60)  # a process runs it, then dies before it looks
    assert await there.store.ask(dialogue.id, Ask.STOP)
    await here.store.release_lease(dialogue.id)  # its lease lapses
    events = [e async for e in there.run(dialogue.id)]
    ended = events[-1].dialogue
    assert (ended.stop_reason, ended.stop_detail) == (StopReason.USER_STOP, "stopped from another process")
    assert await there.store.list_turns(dialogue.id) == [] and server.chat_requests == []


async def test_an_ask_left_long_ago_does_not_stop_the_run_that_resumes_it_now(two_processes, server):
    here, there = two_processes
    dialogue = await here.create(make_spec(rounds=1))
    await here.store.take_lease(dialogue.id, 60)  # a process runs it, then dies before it looks
    assert await there.store.ask(dialogue.id, Ask.STOP)
    await here.store.release_lease(dialogue.id)
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert await here.store.write("UPDATE asks SET asked_at = $1", (an_hour_ago,)) == 1
    events = [e async for e in there.run(dialogue.id)]  # resumed an hour later, by anyone
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS


async def test_a_person_s_words_given_in_another_process_become_their_turn(two_processes):
    here, there = two_processes
    dialogue = await here.create(with_human(rounds=1))
    events = []
    async for event in here.run(dialogue.id):
        events.append(event)
        if isinstance(event, AwaitingHuman):
            assert await there.store.ask(dialogue.id, Ask.SAY, "Words typed in another process.")
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    first = (await there.store.list_turns(dialogue.id))[0]
    assert first.speaker == "Alice" and first.text == "Words typed in another process."
