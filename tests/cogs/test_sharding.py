"""The gateway split into shards: a process runs the shards its settings name, a dialogue in a
server on any of them runs as ever, and a stop reaches a dialogue whichever process runs it."""

from __future__ import annotations

import pytest

from bot.models import Ask, Status
from bot.store import Store
from tests.cogs.test_voices_cog import hold_second_turn, persona_posts, start
from tests.conftest import GLM, OPUS


async def dialogue_in(world, guild) -> None:
    channel = guild.create_text_channel("general")
    member = guild.add_member(world.env.create_user(f"member-{guild.id}"))
    result = await member.slash(
        channel, "voices start", a=OPUS, b=GLM, opening="Hello.", rounds=1, budget="0.25"
    )
    assert "Started dialogue" in result.response.content
    dialogue_id = int(result.response.content.split("Started dialogue ")[1].split()[0])
    await world.finish(dialogue_id)
    assert [m.author.name for m in persona_posts(channel.threads[-1])] == ["claude-opus-4.6", "glm-5"]


@pytest.mark.settings(shard_count=2, shards="0-1")
async def test_one_process_running_both_shards_serves_a_server_on_each(world):
    assert world.bot.shard_count == 2 and sorted(world.bot.shards) == [0, 1]
    for shard in (0, 1):
        guild = world.env.create_guild(shard_id=shard)
        assert world.bot.get_guild(guild.id).shard_id == shard
        await dialogue_in(world, guild)


@pytest.mark.settings(shard_count=2, shards="1")
async def test_a_process_running_one_shard_of_two_serves_the_servers_on_that_shard(world):
    assert list(world.bot.shards) == [1]
    await dialogue_in(world, world.env.create_guild(shard_id=1))


async def test_stop_and_pause_reach_a_dialogue_that_another_process_runs(world, tmp_path):
    """The dialogue's lease is another process's (a shard that took it over, say): the buttons and
    commands here leave the ask for that process instead of refusing or running it twice."""
    hold_second_turn(world)
    await start(world, rounds=5)
    thread = world.thread()
    await world.crash()  # this process no longer runs it
    async with Store.open(tmp_path / "voices.db") as elsewhere:
        await elsewhere.take_lease(1, 60)
        stopped = await world.alice.slash(thread, "voices stop")
        paused = await world.alice.slash(thread, "voices pause")
        assert await elsewhere.take_asks(1) == [(Ask.STOP_NOW, None), (Ask.PAUSE, None)]
    assert stopped.response.content == "Asked the process running dialogue 1 to stop now."
    assert (
        paused.response.content == "Asked the process running dialogue 1 to pause after the turn in flight."
    )
    assert (await world.bot.services.store.get_dialogue(1)).status is Status.RUNNING  # not ended here


async def test_a_member_s_words_reach_a_dialogue_that_another_process_runs(world, tmp_path):
    await start(world, a="me", b=GLM, rounds=1)
    await world.env.settle()  # waiting for alice's words
    thread = world.thread()
    await world.crash()
    async with Store.open(tmp_path / "voices.db") as elsewhere:
        await elsewhere.take_lease(1, 60)
        said = await world.alice.slash(thread, "voices say", text="Said here, spoken there.")
        assert await elsewhere.take_asks(1) == [(Ask.SAY, "Said here, spoken there.")]
    assert said.response.content == "Sent: your words are posted in the thread as your turn."
