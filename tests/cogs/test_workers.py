"""Gateway and workers: a gateway with VOICES_GATEWAY_ONLY opens the thread and leaves the dialogue;
a worker (no commands, no gateway needed) runs it into the thread; a worker that stops leaves its
dialogues for the others."""

from __future__ import annotations

import pytest

from bot.app import utc_now
from bot.models import Ask, Status
from bot.store import Store
from cogs import create_bot
from tests.cogs.conftest import make_settings
from tests.cogs.test_voices_cog import hold_second_turn, persona_posts, start
from tests.fake_openrouter import Reply


@pytest.fixture
async def worker_in(world, tmp_path, server):
    """Replace the bot in SimCord (it holds one client at a time) with a worker on its database;
    closed at the end, as `voices worker` closes on a signal."""
    made = []

    async def replace(**settings):
        worker = create_bot(make_settings(tmp_path, server, **settings), worker=True)
        made.append(worker)
        await world.env.restart_bot(worker)
        await world.env.settle()
        assert worker.tree.get_commands() == []  # a worker takes no commands: the gateway has them
        return worker

    yield replace
    for worker in made:
        await worker.close()


@pytest.mark.settings(gateway_only=True)
async def test_the_gateway_leaves_the_dialogue_and_a_worker_runs_it_into_the_thread(world, worker_in, caplog):
    result = await start(world, rounds=1)
    assert "Started dialogue 1" in result.response.content
    thread = world.thread()
    # The gateway says where its dialogues go, so a gateway with no worker is not a mystery.
    said = [r.getMessage() for r in caplog.get_records("setup")]  # at start-up, in the fixture
    assert any("every dialogue is left for `voices worker` processes" in line for line in said)
    assert not world.bot.relays.is_running(1) and persona_posts(thread) == []
    assert [r.dialogue_id for r in await world.bot.services.rooms.unclaimed(utc_now(), 10)] == [1]
    worker = await worker_in()
    await world.finish(1, worker)  # claimed on its first look
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6", "glm-5"]
    assert any("opened dialogue 1 with:" in m.content for m in thread.history())  # posted once
    assert sum("opened dialogue 1 with:" in m.content for m in thread.history()) == 1
    dialogue = await worker.services.store.get_dialogue(1)
    assert dialogue.status is Status.FINISHED
    assert await worker.services.rooms.unclaimed(utc_now(), 10) == []  # nothing left to claim


@pytest.mark.settings(gateway_only=True)
async def test_a_worker_takes_no_more_dialogues_than_it_may(world, worker_in):
    for _ in range(3):
        hold_second_turn(world, seconds=60)
        await start(world, rounds=2)
    worker = await worker_in(worker_dialogues=2)
    assert worker.relays.running() == 2 and not worker.relays.is_running(3)  # the third waits
    for dialogue_id in (1, 2):
        await world.finish(dialogue_id, worker)
    store = worker.services.store
    for _ in range(300):  # its next looks: the third is taken once there is room
        if (await store.get_dialogue(3)).status.is_final:
            break
        await world.env.advance_time(1.0)
    await world.finish(3, worker)
    for dialogue_id in (1, 2, 3):
        assert (await worker.services.store.get_dialogue(dialogue_id)).status is Status.FINISHED


async def test_a_worker_that_stops_leaves_its_dialogue_to_the_next_without_a_turn_twice(
    world, worker_in, server
):
    """Not gateway-only: the bot runs its dialogue, stops mid-way (as a worker shut down would),
    and a worker carries it on from the turn it reached."""
    hold_second_turn(world)
    await start(world, rounds=2)
    thread = world.thread()
    await world.env.settle()
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6"]
    await world.crash()  # the relays end; their leases are left lapsed, not deleted
    server.enqueue(Reply(text="Second turn."))
    worker = await worker_in()
    await world.finish(1, worker)
    names = [m.author.name for m in persona_posts(thread)]
    assert names == ["claude-opus-4.6", "glm-5", "claude-opus-4.6", "glm-5"]
    turns = await worker.services.store.list_turns(1)
    assert [t.seq for t in turns] == [0, 1, 2, 3]


@pytest.mark.settings(gateway_only=True)
async def test_a_stop_for_a_dialogue_a_worker_took_a_moment_ago_reaches_that_worker(
    world, tmp_path, monkeypatch
):
    """`/voices stop` found nobody running the dialogue and set out to stop it on the gateway; a
    worker claimed it in between. The stop is asked of that worker, not waited on or lost."""
    await start(world, rounds=2)
    gateway = world.bot.services.store
    asked = []
    async with Store.open(tmp_path / "voices.db") as worker:
        original = gateway.ask

        async def claimed_in_between(dialogue_id, action, text=None):
            asked.append(action)
            if len(asked) == 1:  # nobody holds it yet; the worker's claim lands right after
                found = await original(dialogue_id, action, text)
                await worker.take_lease(dialogue_id, 30)
                return found
            return await original(dialogue_id, action, text)

        monkeypatch.setattr(gateway, "ask", claimed_in_between)
        result = await world.alice.slash(world.thread(), "voices stop", dialogue=1)
        await world.env.settle()
        assert "Stopping dialogue 1" in result.response.content
        assert asked == [Ask.STOP_NOW, Ask.STOP_NOW]  # found nobody; then asked the worker
        assert not world.bot.relays.is_running(1)  # the gateway did not stay to wait out the lease
        assert await worker.take_asks(1) == [(Ask.STOP_NOW, None)]
