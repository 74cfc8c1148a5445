"""What spectators get in Discord beyond the turns: the referee, the audience vote, the picture of the
dialogue and dialogues on a schedule. SimCord drives the real bot against the loopback OpenRouter."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal

import discord
import pytest
from PIL import Image

from cogs import create_bot
from tests.cogs.conftest import make_settings
from tests.cogs.test_voices_cog import persona_posts, sent_payloads, start, status_message
from tests.conftest import GLM, OPUS
from tests.fake_openrouter import Reply

REFEREE = "tiny/short-context"


# The referee ------------------------------------------------------------------------------------


async def test_the_referee_posts_its_verdict_as_its_own_persona_and_the_status_keeps_it(world):
    world.server.enqueue_for(REFEREE, Reply("GLM made the stronger case, @everyone."))
    await start(world, rounds=1, referee=REFEREE)
    await world.finish(1)
    thread = world.thread()
    assert "**Referee:** **short-context** (`tiny/short-context`)" in thread.history()[0].content
    posts = persona_posts(thread)
    assert [m.author.name for m in posts] == ["claude-opus-4.6", "glm-5", "short-context"]
    assert posts[-1].content == "**⚖ Verdict**\nGLM made the stronger case, @everyone."
    webhook = [r for r in sent_payloads(world) if r.path.startswith("/webhooks/")]
    (sent,) = [r for r in webhook if "stronger" in str(r.json)]
    assert sent.json["allowed_mentions"] == {"parse": []}
    verdict = next(f for f in status_message(thread).embeds[0].fields if f.name.startswith("Verdict"))
    assert verdict.name == "Verdict · short-context"
    assert verdict.value.startswith("GLM made the stronger case")
    document = json.loads(await thread.history()[-1].attachments[1].read())
    assert [n["kind"] for n in document["notes"]] == ["verdict"]
    shown = await world.bob.slash(thread, "voices status")
    assert any(f.name == "Verdict · short-context" for f in shown.response.embeds[0].fields)
    assert shown.response.embeds[1].fields[-1].name == "short-context (referee)"


async def test_a_budget_too_small_for_the_referee_is_refused_at_start(world):
    result = await start(world, referee=OPUS, budget="0.01")
    assert result.ephemeral
    assert "cannot pay for the first call" in result.response.content
    assert "referee's verdict" in result.response.content
    assert world.channel.threads == [] and world.server.chat_requests == []


async def test_a_referee_must_be_on_the_servers_allowed_list_too(world):
    await world.bot.services.guilds.update(world.guild.id, allowed_models=frozenset({OPUS, GLM}))
    result = await start(world, referee=REFEREE)
    assert "tiny/short-context is not allowed in this server" in result.response.content
    assert world.channel.threads == []


async def test_a_failing_referee_is_one_line_in_the_thread_and_the_dialogue_finishes(world):
    world.server.enqueue_for(REFEREE, Reply(status=400, error={"message": "no such luck", "code": 400}))
    await start(world, rounds=1, referee=REFEREE)
    await world.finish(1)
    thread = world.thread()
    assert any(m.content.startswith("⚖ short-context gave no verdict: ") for m in thread.history())
    assert status_message(thread).embeds[0].description.startswith("**Ended:** all rounds completed")
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6", "glm-5"]
    assert GLM in {r.body["model"] for r in world.server.chat_requests}


# The picture --------------------------------------------------------------------------------------


async def test_the_end_attaches_a_picture_of_the_dialogue_beside_the_transcripts(world):
    await start(world)
    await world.finish(1)
    last = world.thread().history()[-1]
    assert [a.filename for a in last.attachments] == [
        "transcript-1.md",
        "transcript-1.json",
        "dialogue-1.png",
    ]
    picture = Image.open(io.BytesIO(await last.attachments[2].read()))
    assert picture.format == "PNG" and picture.width >= 800
    again = await world.bob.slash(world.channel, "voices transcript", dialogue=1)
    assert "dialogue-1.png" in [a.filename for a in again.response.attachments]


# The audience vote --------------------------------------------------------------------------------


def poll_message(thread):
    (message,) = [m for m in thread.history() if getattr(m, "poll", None) is not None]
    return message


async def close_votes(world, hours: float = 24) -> None:
    """Let the poll's time pass: SimCord finalises the poll, and the bot's clock ticks after it."""
    await world.tick(world.env.now() + timedelta(hours=hours, seconds=1))


@pytest.mark.settings(poll_hours=1)  # the default is 24; an hour's ticks are quicker to simulate
async def test_the_audience_votes_and_the_tally_is_kept_shown_and_in_new_transcripts(world):
    await start(world)
    await world.finish(1)
    thread = world.thread()
    message = poll_message(thread)
    assert message.poll.question == "Who made the stronger case?"
    assert [a.text for a in message.poll.answers] == ["claude-opus-4.6", "glm-5"]
    # The vote comes before the closing message, which keeps the transcripts and the last word.
    assert thread.history()[-1].content.startswith("Dialogue 1 ended")
    at_end = json.loads(await thread.history()[-1].attachments[1].read())
    assert at_end["audience_vote"]["closed_at"] is None
    assert [a["votes"] for a in at_end["audience_vote"]["answers"]] == [None, None]

    vote = (await world.bot.services.store.get_dialogue(1)).vote
    assert vote.closes_at - vote.opened_at == timedelta(hours=1)
    await world.tick(world.env.now() + timedelta(minutes=50))  # not yet: nothing is read or posted
    assert (await world.bot.services.store.get_dialogue(1)).vote.closed_at is None
    await world.alice.vote(message, answer=2)
    await world.bob.vote(message, answer=2)
    await world.bob.vote(message, answer=1)  # changed his mind: one vote each member
    await close_votes(world, hours=1)

    line = thread.history()[-1]
    assert line.content.startswith(
        "🗳 The audience has voted: Who made the stronger case? claude-opus-4.6 1 · glm-5 1 "
        "(2 votes; a tie: claude-opus-4.6 and glm-5)."
    )
    assert [a.filename for a in line.attachments][:2] == ["transcript-1.md", "transcript-1.json"]
    document = json.loads(await line.attachments[1].read())
    assert [(a["answer"], a["votes"]) for a in document["audience_vote"]["answers"]] == [
        ("claude-opus-4.6", 1),
        ("glm-5", 1),
    ]
    assert (
        "- **Audience vote:** Who made the stronger case? claude-opus-4.6 1"
        in (await line.attachments[0].read()).decode()
    )
    shown = await world.bob.slash(thread, "voices status")
    (field,) = [f for f in shown.response.embeds[0].fields if f.name.startswith("Audience")]
    assert field.value.startswith("claude-opus-4.6 1 · glm-5 1")
    again = await world.bob.slash(world.channel, "voices transcript", dialogue=1)
    assert json.loads(await again.response.attachments[1].read())["audience_vote"]["closed_at"]
    # Ticking again posts nothing twice.
    before = len(thread.history())
    await world.tick(world.env.now() + timedelta(minutes=10))
    assert len(thread.history()) == before


async def test_a_server_words_its_own_question_sets_the_time_or_switches_votes_off(world):
    refused = await world.bob.slash(world.channel, "voices config", polls=False)
    assert "Manage Server" in refused.response.content
    managers = world.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[managers])
    too_long = await carol.slash(world.channel, "voices config", poll_question="?" * 301)
    assert "the poll question has 301 characters; Discord takes 300" in too_long.response.content
    shown = await carol.slash(world.channel, "voices config")
    assert "audience vote: “Who made the stronger case?”, 24 h" in shown.response.content
    shown = await carol.slash(world.channel, "voices config", poll_question="Who was funnier?", poll_hours=1)
    assert "audience vote: “Who was funnier?”, 1 h" in shown.response.content
    await start(world, rounds=1)
    await world.finish(1)
    message = poll_message(world.thread())
    assert message.poll.question == "Who was funnier?"
    await close_votes(world, hours=1)
    assert "The audience has voted: Who was funnier? claude-opus-4.6 0 · glm-5 0: no votes" in (
        world.thread().history()[-1].content
    )
    switched = await carol.slash(world.channel, "voices config", polls=False)
    assert "audience vote: off" in switched.response.content
    await start(world, rounds=1)
    await world.finish(2)
    assert [m for m in world.thread().history() if getattr(m, "poll", None) is not None] == []


async def test_without_the_poll_permission_the_thread_is_told_once_and_the_dialogue_ends_as_ever(world):
    denied = {world.guild.me: discord.PermissionOverwrite(send_polls=False)}
    channel = world.guild.create_text_channel("no-polls", overwrites=denied)
    await world.alice.slash(channel, "voices start", a=OPUS, b=GLM, opening="Hi", rounds=1, budget="0.25")
    await world.finish(1)
    thread = channel.threads[-1]
    told = [m for m in thread.history() if "Send Polls" in m.content]
    assert len(told) == 1 and "/voices config polls:False" in told[0].content
    assert [m for m in thread.history() if getattr(m, "poll", None) is not None] == []
    files = [a.filename for a in thread.history()[-1].attachments]
    assert files[:2] == ["transcript-1.md", "transcript-1.json"]
    assert await world.bot.services.votes.due(world.env.now() + timedelta(days=400)) == []


@pytest.mark.settings(poll_hours=1)
async def test_a_deleted_poll_closes_without_a_tally_and_nothing_breaks(world):
    await start(world, rounds=1)
    await world.finish(1)
    message = poll_message(world.thread())
    mods = world.guild.create_role("mods", permissions=discord.Permissions(manage_messages=True))
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[mods])
    await carol.delete(message)
    await close_votes(world, hours=1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.vote is not None and dialogue.vote.closed_at is not None
    assert dialogue.vote.counts is None
    assert dialogue.vote.result == "closed without a tally (its message was deleted)"


# Shows on a schedule ------------------------------------------------------------------------------


def manager(world, name="carol"):
    managers = world.guild.create_role(f"{name}-mods", permissions=discord.Permissions(manage_guild=True))
    return world.guild.add_member(world.env.create_user(name), roles=[managers])


def soon(world, minutes: int) -> str:
    """Return the time of day (HH:MM, UTC) this many minutes after SimCord's now: a slot the test
    reaches in minutes of simulated time, not hours."""
    return (world.env.now() + timedelta(minutes=minutes)).strftime("%H:%M")


async def add_show(world, member, **options):
    values = {"a": OPUS, "b": GLM, "opening": "What is a good day?", "at": soon(world, 10), "rounds": 1}
    return await member.slash(world.channel, "voices schedule add", **(values | options))


async def test_a_scheduled_show_starts_at_its_slot_once_and_again_the_next_day(world, tmp_path, server):
    refused = await add_show(world, world.bob)
    assert (
        refused.ephemeral
        and "scheduling shows needs the Manage Server permission" in refused.response.content
    )
    carol = manager(world)
    at = soon(world, 10)
    added = await add_show(world, carol, at=at, budget="0.25")
    assert added.response.content.startswith(
        f"Schedule 1: claude-opus-4.6 ↔ glm-5, daily at {at} UTC in <#{world.channel.id}>, 1 round, "
        "budget $0.2500; first on "
    )
    (show,) = await world.bot.shows.schedules.of_guild(world.guild.id)
    assert show.next_run_at.strftime("%H:%M") == at and show.next_run_at > world.env.now()

    await world.tick(show.next_run_at - timedelta(minutes=2))  # not yet
    assert world.channel.threads == []
    await world.tick(show.next_run_at)
    await world.finish(1)
    thread = world.thread()
    assert thread.history()[0].content.startswith(
        f"Schedule 1 (daily at {at} UTC, set by <@{carol.id}>) opened dialogue 1 with:\n> What is a good day?"
    )
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6", "glm-5"]
    shown = await world.bot.services.store.get_dialogue(1)  # the deployment's defaults, as at /voices start
    assert shown.origin == "schedule" and str(shown.context_policy) == world.bot.settings.context_policy
    await world.tick(show.next_run_at + timedelta(minutes=1))  # the same slot never runs twice
    assert len(world.channel.threads) == 1
    listed = await world.bob.slash(world.channel, "voices schedule list")
    assert "· last: dialogue 1" in listed.response.content and "next " in listed.response.content
    # The next day (the hours between pass with the bot down, which simulates quicker).
    tomorrow = show.next_run_at + timedelta(days=1)
    away = tomorrow - timedelta(minutes=5) - world.env.now()
    bot = await down_then_back(world, world.bot, tmp_path, server, away)
    await world.tick(tomorrow)
    await bot.relays.wait(2)
    assert len(world.channel.threads) == 2
    removed = await carol.slash(world.channel, "voices schedule remove", schedule=1)
    assert removed.response.content == f"Schedule 1 (daily at {at} UTC) is removed."
    await world.tick(tomorrow + timedelta(minutes=30))
    assert len(world.channel.threads) == 2


async def test_a_show_counts_against_the_servers_caps_and_says_when_it_cannot_start(world):
    carol = manager(world)
    await add_show(world, carol, budget="0.40")
    (show,) = await world.bot.shows.schedules.of_guild(world.guild.id)
    await world.bot.services.guilds.update(world.guild.id, daily_cap_guild=Decimal("0.30"))
    await world.tick(show.next_run_at)
    assert world.channel.threads == []
    said = world.channel.history()[-1].content
    assert said.startswith("Scheduled show 1 did not start this time: the server's daily cap leaves $0.3000")
    (show,) = await world.bot.shows.schedules.of_guild(world.guild.id)
    assert show.disabled is None  # tomorrow it tries again


async def test_a_show_refuses_what_a_dialogue_would_and_a_member_seat(world):
    carol = manager(world)
    for options, message in (
        ({"at": "6pm"}, "'6pm' is not a time of day; write it as HH:MM in UTC"),
        ({"cadence": "weekly"}, "a weekly show needs its weekday"),
        ({"b": "me"}, "a scheduled show has no seat for a member"),
        ({"rounds": 99}, "this server allows at most"),
        ({"budget": "0.00001"}, "below the worst case of the first call"),
    ):
        result = await add_show(world, carol, **options)
        assert result.ephemeral and message in result.response.content, options
    assert await world.bot.shows.schedules.of_guild(world.guild.id) == []


async def test_a_show_whose_channel_or_voice_is_gone_disables_itself_and_says_so(world):
    carol = manager(world)
    elsewhere = world.guild.create_text_channel("shows")
    await add_show(world, carol, a="claude", channel=elsewhere)
    await add_show(world, carol, at=soon(world, 20))
    first, second = await world.bot.shows.schedules.of_guild(world.guild.id)
    del world.bot.personas["claude"]  # the persona library was edited and the bot restarted
    await world.tick(first.next_run_at)
    told = elsewhere.history()[-1].content
    assert told.startswith("Scheduled show 1 is disabled: 'claude' is neither a persona")
    assert "`/voices schedule remove 1`" in told
    world.env.backend.delete_channel(world.channel.id)  # as a moderator would, while the bot looks on
    await world.env.settle()
    await world.tick(second.next_run_at)
    first, second = await world.bot.shows.schedules.of_guild(world.guild.id)
    assert first.disabled.startswith("'claude' is neither a persona")
    assert second.disabled == "its channel is gone, or the bot can no longer see it"
    assert elsewhere.threads == [] and first.last_dialogue_id is None and second.last_dialogue_id is None
    listed = await carol.slash(elsewhere, "voices schedule list")
    assert "**disabled:** its channel is gone" in listed.response.content


async def down_then_back(world, bot, tmp_path, server, away: timedelta):
    """The bot's process dies (its clock with it), stays down for `away`, and a new one starts."""
    bot.clock.cancel()
    await bot.relays.close()
    await world.env.advance_time(away.total_seconds())
    fresh = create_bot(make_settings(tmp_path, server))
    await world.env.restart_bot(fresh)
    await world.env.settle()  # its first tick, at start-up, catches up
    return fresh


async def test_a_slot_missed_while_the_bot_was_down_runs_once_if_recent_or_is_skipped(
    world, tmp_path, server
):
    carol = manager(world)
    await add_show(world, carol, at=soon(world, 40))
    await add_show(world, carol, at=soon(world, 70))
    first, _ = await world.bot.shows.schedules.of_guild(world.guild.id)
    await world.tick(first.next_run_at - timedelta(minutes=32))  # 17:29: nothing due yet
    assert world.channel.threads == []
    # Down until 18:46: 18:00's slot is 46 minutes late and 18:30's 16, within the hour's grace;
    # each runs once, at start-up.
    bot = await down_then_back(world, world.bot, tmp_path, server, timedelta(minutes=77))
    assert len(world.channel.threads) == 2
    for dialogue_id in (1, 2):
        await bot.relays.wait(dialogue_id)
    # Down for a day: the next slots are hours past by the time it is back; both are skipped, and
    # both wait for the slot after.
    bot = await down_then_back(world, bot, tmp_path, server, timedelta(days=1, hours=3))
    assert len(world.channel.threads) == 2
    for show in await bot.shows.schedules.of_guild(world.guild.id):
        slot = first.next_run_at.replace(hour=show.at.hour, minute=show.at.minute)
        assert show.next_run_at == slot + timedelta(days=2)
        assert show.last_dialogue_id in (1, 2)


async def test_a_show_survives_a_restart_and_runs_at_its_slot_under_the_new_process(world, tmp_path, server):
    carol = manager(world)
    await add_show(world, carol)
    (show,) = await world.bot.shows.schedules.of_guild(world.guild.id)
    bot = await down_then_back(world, world.bot, tmp_path, server, timedelta(minutes=5))
    await world.tick(show.next_run_at)
    (thread,) = world.channel.threads
    await bot.relays.wait(1)
    await world.env.settle()
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6", "glm-5"]
    (show,) = await bot.shows.schedules.of_guild(world.guild.id)
    assert show.last_dialogue_id == 1


@pytest.mark.settings(poll_hours=1)
async def test_a_vote_that_closed_while_the_bot_was_down_is_read_when_it_is_back(world, tmp_path, server):
    await start(world, rounds=1)
    await world.finish(1)
    thread = world.thread()
    await world.alice.vote(poll_message(thread), answer=1)
    bot = await down_then_back(world, world.bot, tmp_path, server, timedelta(hours=2))
    line = thread.history()[-1]
    assert line.content.startswith("🗳 The audience has voted: Who made the stronger case? claude-opus-4.6 1")
    assert (await bot.services.store.get_dialogue(1)).vote.counts == (1, 0)
