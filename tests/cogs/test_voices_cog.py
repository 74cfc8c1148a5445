"""`/voices` end to end: SimCord drives the real command tree against the loopback OpenRouter."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from decimal import Decimal
from types import SimpleNamespace

import discord
import pytest
from simcord._dpy_internals import real_monotonic
from simcord.backend.errors import OptionError

from bot.models import Status, StopReason
from bot.personas import load_personas
from bot.providers.local import local_available
from bot.store import Store
from cogs import create_bot
from cogs.files import transcript_files
from cogs.webhooks import WebhookPool
from tests.cogs.conftest import make_settings
from tests.conftest import API_KEY, GLM, OPUS
from tests.fake_openrouter import Reply


async def start(world, member=None, **options):
    values = {"a": OPUS, "b": GLM, "opening": "Hello there.", "rounds": 2, "budget": "0.25"} | options
    return await (member or world.alice).slash(world.channel, "voices start", **values)


async def resumed_after_a_crash(world, tmp_path, server, dialogue_id: int):
    """The bot's process dies mid-dialogue; a new one starts on the same database, resumes the
    dialogue and runs it to its end. Return the new bot."""
    fresh = create_bot(make_settings(tmp_path, server))
    await world.crash()
    await world.env.restart_bot(fresh)
    await world.env.settle()
    await fresh.relays.wait(dialogue_id)
    await world.env.settle()
    return fresh


def hold_second_turn(world, seconds: int = 30) -> None:
    """Make the second call meet a 429 with Retry-After, so the dialogue waits there (in SimCord's
    virtual time) until the test moves the clock on: the moment to click, stop or restart."""
    limited = {"error": {"code": 429, "message": "slow down"}}
    world.server.enqueue(
        Reply(text="First turn."), Reply(status=429, headers={"Retry-After": str(seconds)}, error=limited)
    )


def persona_posts(thread):
    return [m for m in thread.history() if m.webhook_id is not None]


def status_message(thread):
    return next(m for m in thread.history() if m.embeds)


def sent_payloads(world):
    """Every message the bot or its webhook created or edited, as Discord received it."""
    return [
        r
        for r in world.env.http_requests
        if r.method in ("POST", "PATCH")
        and isinstance(r.json, dict)
        and ("/messages" in r.path or r.path.startswith("/webhooks/"))
    ]


async def test_start_runs_a_dialogue_in_a_public_thread_as_two_personas(world):
    result = await start(world)
    assert result.ephemeral
    assert "Started dialogue 1 in <#" in result.response.content
    assert "budget $0.2500" in result.response.content and "at most $" in result.response.content
    await world.finish(1)
    thread = world.thread()
    assert thread.name == "claude-opus-4.6 ↔ glm-5"
    (created,) = [r for r in world.env.http_requests if r.path == f"/channels/{world.channel.id}/threads"]
    assert created.json["type"] == discord.ChannelType.public_thread.value
    posts = persona_posts(thread)
    assert [m.author.name for m in posts] == ["claude-opus-4.6", "glm-5"] * 2
    assert posts[3].content.startswith("Reply 4 from z-ai/glm-5")
    # One webhook on the parent channel serves both personas.
    assert len({m.webhook_id for m in posts}) == 1
    creates = [r for r in world.env.http_requests if r.method == "POST" and r.path.endswith("/webhooks")]
    assert len(creates) == 1 and creates[0].path == f"/channels/{world.channel.id}/webhooks"


async def test_the_end_posts_status_transcripts_and_a_notice_in_the_channel(world):
    await start(world)
    await world.finish(1)
    thread = world.thread()
    status = status_message(thread)
    assert status.embeds[0].description.startswith("**Ended:** all rounds completed")
    assert status.components == []
    last = thread.history()[-1]
    assert [a.filename for a in last.attachments][:2] == ["transcript-1.md", "transcript-1.json"]
    markdown = (await last.attachments[0].read()).decode()
    document = json.loads(await last.attachments[1].read())
    assert markdown.startswith("# Voices Chat: claude-opus-4.6 <-> glm-5")
    assert document["dialogue"]["stop_reason"] == "max_rounds" and len(document["turns"]) == 4
    notice = world.channel.history()[-1]
    assert "Dialogue 1 (claude-opus-4.6 ↔ glm-5) ended: all rounds completed." in notice.content
    assert str(thread.id) in notice.content


async def test_the_status_while_each_voice_speaks_shows_the_turns_before_it(world):
    """Each redraw of the status names the speaker, its round, and every voice's tokens as the
    turns committed before it left them, never a turn behind or ahead."""
    world.server.enqueue(
        *(
            Reply(text=f"Turn {n}.", usage={"prompt_tokens": 100 * n, "completion_tokens": n})
            for n in range(1, 5)
        )
    )
    await start(world)
    await world.finish(1)
    document = json.loads(await world.thread().history()[-1].attachments[1].read())
    turns = document["turns"]
    speaking = [
        embed
        for request in sent_payloads(world)
        for embed in request.json.get("embeds") or ()
        if (embed.get("description") or "").startswith("**Speaking:**")
    ]
    assert [e["description"] for e in speaking] == [f"**Speaking:** {t['speaker']}" for t in turns]
    for before, embed in enumerate(speaking):
        fields = {f["name"].split(" · ")[0]: f["value"] for f in embed["fields"]}
        assert fields["Round"] == f"{before // 2 + 1}/2"
        for seat, name in enumerate(("claude-opus-4.6", "glm-5")):
            mine = [t for t in turns[:before] if t["seat"] == seat]
            prompt, completion = (
                sum(t["prompt_tokens"] for t in mine),
                sum(t["completion_tokens"] for t in mine),
            )
            assert fields[name] == f"prompt {prompt} · completion {completion} · reasoning 0"


async def test_a_seed_given_at_start_is_sent_with_every_call_and_kept_in_the_transcript(world):
    await start(world, rounds=1, seed=77)
    await world.finish(1)
    assert [r.body["seed"] for r in world.server.chat_requests] == [77, 78]
    document = json.loads(await world.thread().history()[-1].attachments[1].read())
    assert document["dialogue"]["seed"] == 77
    # The option's range is declared to Discord, whose client refuses a seed outside it.
    with pytest.raises(OptionError, match="'seed' of 'voices start' must be ≥ 0"):
        await start(world, rounds=1, seed=-1)


async def test_model_output_never_pings_anyone_and_the_key_never_shows(world):
    world.server.enqueue(Reply(text="Hey @everyone and @here and <@123> look at this"))
    await start(world, rounds=1)
    await world.finish(1)
    assert "@everyone" in persona_posts(world.thread())[0].content
    for request in sent_payloads(world):
        if "content" in request.json or "embeds" in request.json:
            if request.method == "POST":
                assert request.json.get("allowed_mentions") == {"parse": []}, request
    everything = json.dumps([r.json for r in world.env.http_requests], default=str)
    assert API_KEY not in everything


async def test_a_long_reply_with_code_is_split_with_fences_kept_balanced(world):
    code = "```python\n" + "\n".join(f"print('line {i}')" for i in range(250)) + "\n```"
    text = "Here is the program.\n\n" + code + "\n\nThat is all. " + "More words. " * 100
    assert len(text) > 5000
    world.server.enqueue(Reply(text=text, chunk_words=50))
    await start(world, rounds=1)
    await world.finish(1)
    posts = [m for m in persona_posts(world.thread()) if m.author.name == "claude-opus-4.6"]
    assert len(posts) >= 3
    for post in posts:
        assert len(post.content) <= 2000
        assert post.content.count("```") % 2 == 0
    assert "print('line 249')" in "".join(p.content for p in posts)


async def test_a_streamed_reply_is_edited_at_most_once_a_second(world, monkeypatch):
    # SimCord's clock only moves when told to; here the throttle reads real seconds, and an edit
    # that waits out its second waits real time (in an executor, which SimCord waits for).
    async def real_pause(seconds: float) -> None:
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, seconds)

    monkeypatch.setattr("cogs.relay.now", real_monotonic)
    monkeypatch.setattr("cogs.relay.pause", real_pause)
    edited: dict[int, list[float]] = {}
    original = WebhookPool.edit

    async def timed(self, thread, message_id, content):
        edited.setdefault(message_id, []).append(real_monotonic())
        await original(self, thread, message_id, content)

    monkeypatch.setattr(WebhookPool, "edit", timed)
    world.server.enqueue(Reply(text=" ".join(f"w{i}" for i in range(60)), chunk_words=2, chunk_delay=0.1))
    await start(world, rounds=1)
    await world.finish(1)
    first = persona_posts(world.thread())[0]
    assert first.content.endswith("w59")
    # About three seconds of streaming: a post, a few throttled edits and the closing one, which
    # waits out its second rather than following the last edit at once.
    assert 2 <= len(edited[first.id]) <= 5
    for times in edited.values():
        assert all(b - a >= 0.99 for a, b in zip(times, times[1:], strict=False)), times


async def test_bad_options_are_refused_ephemerally_and_nothing_is_created(world):
    cases = [
        ({"b": "z-ai/glm5"}, "unknown model 'z-ai/glm5'; did you mean z-ai/glm-5?"),
        ({"budget": "lots"}, "budget must be an amount in USD such as 0.25, not 'lots'"),
        ({"budget": "0"}, "budget must be above $0"),
        ({"b": "nobody"}, "'nobody' is neither a persona"),
        ({"budget": "0.00001"}, "below the worst case of the first call"),
        ({"budget": "1e-21"}, "budget is kept to a billionth of a dollar (9 decimal places)"),
        (
            {"a": "tiny/short-context", "opening": "word " * 700},
            "exceed tiny/short-context's context of 700; shorten the opening or choose a model",
        ),
    ]
    for options, message in cases:
        result = await start(world, **options)
        assert result.ephemeral and message in result.response.content, result.response.content
    assert world.channel.threads == []
    assert world.server.chat_requests == []


async def test_server_limits_are_enforced_and_only_managers_change_them(world):
    refused = await world.alice.slash(world.channel, "voices config", max_rounds=3)
    assert "Manage Server" in refused.response.content
    bot = world.bot
    await bot.services.guilds.update(world.guild.id, max_rounds=3, max_concurrent=1)
    too_long = await start(world, rounds=4)
    assert "at most 3 rounds" in too_long.response.content
    shown = await world.alice.slash(world.channel, "voices config")
    assert "Rounds ≤ 3" in shown.response.content and "1 at once" in shown.response.content


async def test_the_bot_names_the_permissions_it_lacks(world):
    me = world.guild.me
    locked = world.guild.create_text_channel(
        "locked",
        overwrites={me: discord.PermissionOverwrite(manage_webhooks=False, create_public_threads=False)},
    )
    result = await world.alice.slash(locked, "voices start", a=OPUS, b=GLM, opening="Hi")
    assert result.ephemeral
    assert "Manage Webhooks" in result.response.content and "Create Public Threads" in result.response.content
    assert locked.threads == []


async def test_pause_and_resume_buttons_and_a_refusal_for_others(world):
    hold_second_turn(world)
    await start(world, rounds=3)
    thread = world.thread()
    refused = await world.bob.click(status_message(thread), label="Pause")
    assert refused.ephemeral and "only whoever started this dialogue" in refused.response.content
    await world.alice.click(status_message(thread), label="Pause")
    await world.env.advance_time(30)
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.status is Status.PAUSED
    assert status_message(thread).embeds[0].description.startswith("**Paused.**")
    await world.alice.click(status_message(thread), label="Resume")
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.stop_reason is StopReason.MAX_ROUNDS
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6", "glm-5"] * 3


async def test_stop_command_in_the_thread_ends_the_dialogue_and_still_posts_the_transcript(world):
    hold_second_turn(world)
    await start(world, rounds=5)
    thread = world.thread()
    result = await world.alice.slash(thread, "voices stop")
    assert result.ephemeral and "Stopping dialogue 1" in result.response.content
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.status is Status.STOPPED and dialogue.stop_reason is StopReason.USER_STOP
    assert thread.history()[-1].attachments[0].filename == "transcript-1.md"
    again = await world.alice.slash(thread, "voices stop")
    assert "has already ended" in again.response.content


async def test_extend_gives_a_finished_dialogue_more_rounds(world):
    await start(world, rounds=1)
    await world.finish(1)
    refused = await world.bob.slash(world.thread(), "voices extend", rounds=1)
    assert "only whoever started" in refused.response.content
    result = await world.alice.slash(world.thread(), "voices extend", rounds=1)
    assert "now has 2 rounds" in result.response.content
    await world.finish(1)
    assert len(await world.bot.services.store.list_turns(1)) == 4


async def test_status_list_transcript_and_personas(world):
    await start(world, rounds=1)
    await world.finish(1)
    status = await world.alice.slash(world.thread(), "voices status")
    assert status.ephemeral and status.response.embeds[0].footer.text == "Dialogue 1"
    listing = await world.alice.slash(world.channel, "voices list")
    assert "**1** · claude-opus-4.6 ↔ glm-5 · max_rounds" in listing.response.content
    again = await world.bob.slash(world.channel, "voices transcript", dialogue=1)
    assert [a.filename for a in again.response.attachments][:2] == ["transcript-1.md", "transcript-1.json"]
    personas = await world.alice.slash(world.channel, "voices personas")
    assert "**glm** · GLM · `z-ai/glm-5`" in personas.response.content


async def test_autocomplete_offers_personas_and_models(world):
    choices = await world.alice.autocomplete(world.channel, "voices start", "a", "gl")
    assert [c["value"] for c in choices] == ["glm", "z-ai/glm-5"]


async def test_autocomplete_offers_only_what_discord_accepts(world):
    """Discord refuses a whole list of suggestions if one value is over 100 characters: a model id
    that long is left out of it (and can still be typed), and the others are offered."""
    long_id = "z-ai/glm-" + "x" * 100
    world.server.models = [*world.server.models, {**world.server.models[0], "id": long_id}]
    await world.bot.catalogue.models(refresh=True)
    choices = await world.alice.autocomplete(world.channel, "voices start", "a", "gl")
    assert [c["value"] for c in choices] == ["glm", "z-ai/glm-5"]
    assert all(len(c["name"]) <= 100 and len(c["value"]) <= 100 for c in choices)


async def test_a_provider_error_is_a_short_notice_and_a_recorded_reason(world):
    world.server.enqueue(Reply(status=402, error={"error": {"code": 402, "message": "Insufficient credits"}}))
    await start(world)
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.stop_reason is StopReason.PROVIDER_ERROR
    assert (
        "out of credits (402: Insufficient credits)" in status_message(world.thread()).embeds[0].description
    )


async def test_reasoning_is_hidden_by_default_and_attached_as_a_file_when_asked(world):
    world.server.enqueue(Reply(text="Visible.", reasoning="secret thoughts"), Reply(text="Also visible."))
    await start(world, rounds=1)
    await world.finish(1)
    assert all("secret thoughts" not in m.content for m in world.thread().history())
    await world.bot.services.guilds.update(world.guild.id, reasoning="file")
    world.server.enqueue(Reply(text="Visible.", reasoning="secret thoughts"), Reply(text="Also visible."))
    await start(world, rounds=1)
    await world.finish(2)
    files = [a for m in persona_posts(world.thread()) for a in m.attachments]
    assert [a.filename for a in files] == ["reasoning-1.txt"]
    assert (await files[0].read()).decode() == "secret thoughts"


async def test_a_deleted_webhook_is_recreated(world):
    await start(world, rounds=1)
    await world.finish(1)
    channel = world.bot.get_channel(world.channel.id)
    for hook in await channel.webhooks():
        await hook.delete()
    await start(world, rounds=1)
    await world.finish(2)
    assert len(persona_posts(world.thread())) == 2
    assert len(await channel.webhooks()) == 1


async def test_a_deleted_thread_stops_the_dialogue_with_a_recorded_reason(world):
    hold_second_turn(world)
    await start(world, rounds=5)
    await world.bot.get_channel(world.thread().id).delete()
    await world.env.advance_time(30)
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.stop_reason is StopReason.THREAD_GONE and dialogue.status is Status.FAILED


async def test_a_restart_mid_dialogue_resumes_with_no_turn_posted_twice_or_lost(world, tmp_path, server):
    hold_second_turn(world)
    await start(world, rounds=3)
    assert len(await world.bot.services.store.list_turns(1)) == 1
    fresh = await resumed_after_a_crash(world, tmp_path, server, 1)
    dialogue = await fresh.services.store.get_dialogue(1)
    assert dialogue.stop_reason is StopReason.MAX_ROUNDS
    posts = persona_posts(world.thread())
    assert [m.author.name for m in posts] == ["claude-opus-4.6", "glm-5"] * 3
    texts = [m.content for m in posts]
    assert len(set(texts)) == 6


async def test_a_refused_line_under_a_turn_does_not_get_the_turn_posted_again_after_a_restart(
    world, tmp_path, server, monkeypatch
):
    # Discord refuses the "stopped at its token limit" line under the first reply (after
    # discord.py's own handling), then the process dies while the second call waits.
    original, refused = WebhookPool.send, []

    async def refuse_the_line(self, thread, name, avatar_url, content="", **extra):
        if content.startswith("*✂") and not refused:
            refused.append(content)
            answer = SimpleNamespace(status=400, reason="Bad Request")
            raise discord.HTTPException(answer, {"code": 50035, "message": "Invalid Form Body"})
        return await original(self, thread, name, avatar_url, content, **extra)

    monkeypatch.setattr(WebhookPool, "send", refuse_the_line)
    limited = {"error": {"code": 429, "message": "slow down"}}
    world.server.enqueue(
        Reply(text="A thought that runs on and", finish_reason="length"),
        Reply(status=429, headers={"Retry-After": "30"}, error=limited),
    )
    await start(world, rounds=1)
    assert len(await world.bot.services.store.list_turns(1)) == 1 and refused
    fresh = await resumed_after_a_crash(world, tmp_path, server, 1)
    assert (await fresh.services.store.get_dialogue(1)).stop_reason is StopReason.MAX_ROUNDS
    texts = [m.content for m in persona_posts(world.thread())]
    assert texts.count("A thought that runs on and") == 1, texts


async def test_an_opening_lost_to_a_crash_is_posted_when_the_dialogue_resumes_and_only_once(
    world, tmp_path, server
):
    hold_second_turn(world)
    await start(world, rounds=2)
    thread = world.thread()
    (opening,) = [m for m in thread.history() if "opened dialogue 1" in m.content]
    # The process died after making the thread but before its first message reached Discord.
    async with world.bot.services.store.transaction() as conn:
        await conn.execute("UPDATE rooms SET opening_message_id = NULL")
    mods = world.guild.create_role("mods", permissions=discord.Permissions(manage_messages=True))
    await world.guild.add_member(world.env.create_user("carol"), roles=[mods]).delete(opening)
    fresh = await resumed_after_a_crash(world, tmp_path, server, 1)
    openings = [m for m in thread.history() if "opened dialogue 1 with:" in m.content]
    assert len(openings) == 1 and openings[0].content.startswith(f"<@{world.alice.id}> opened dialogue 1")
    assert (await fresh.services.rooms.get(1)).opening_message_id == openings[0].id


@pytest.mark.parametrize("action", ["stop", "pause", "resume"])
async def test_control_outside_a_dialogue_thread_says_how_to_name_one(world, action):
    result = await world.alice.slash(world.channel, f"voices {action}")
    assert "use this in a dialogue's thread, or give the dialogue's id" in result.response.content


async def test_commands_are_synced_once_not_on_every_start(world, tmp_path, server):
    def syncs():
        return [r for r in world.env.http_requests if r.method == "PUT" and r.path.endswith("/commands")]

    assert len(syncs()) == 1
    await world.crash()
    await world.env.restart_bot(create_bot(make_settings(tmp_path, server)))
    assert len(syncs()) == 1
    assert "voices start" in world.alice.available_commands(world.channel)


async def test_a_manager_sets_the_limits_and_they_bind(world):
    manager_role = world.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[manager_role])
    result = await carol.slash(
        world.channel,
        "voices config",
        max_concurrent=2,
        daily_cap_member="0.30",
        allowed_models=f"{OPUS}, {GLM}",
    )
    assert "2 at once" in result.response.content and "member $0.3000" in result.response.content
    bad = await carol.slash(world.channel, "voices config", allowed_models="z-ai/glm5")
    assert "unknown model 'z-ai/glm5'" in bad.response.content
    hold_second_turn(world)
    await start(world, rounds=3, budget="0.25")
    # A running dialogue counts at its whole budget against the member's daily cap.
    capped = await start(world, budget="0.25")
    assert "your daily cap leaves $0.0500 today; lower the budget" in capped.response.content
    hold_second_turn(world)
    assert "Started dialogue 2" in (await start(world, member=world.bob)).response.content
    busy = await start(world, member=world.bob, budget="0.01")
    assert "already has 2 dialogues going (at most 2)" in busy.response.content


async def test_models_outside_the_allowed_list_are_refused(world):
    await world.bot.services.guilds.update(world.guild.id, allowed_models=frozenset({OPUS}))
    result = await start(world)
    assert f"{GLM} is not allowed in this server" in result.response.content


async def test_persona_avatar_and_name_reach_the_webhook(world, tmp_path):
    library = tmp_path / "personas.toml"
    library.write_text(
        '[sage]\nname = "Discord Sage"\nmodel = "z-ai/glm-5"\navatar_url = "https://example.org/sage.png"\n'
    )
    world.bot.personas = load_personas(library)
    await start(world, a="sage", rounds=1)
    await world.finish(1)
    executes = [
        r
        for r in world.env.http_requests
        if r.method == "POST"
        and r.path.startswith("/webhooks/")
        and r.json
        and r.json.get("username") == "Dis\u200acord Sage"
    ]
    assert executes and executes[0].json["avatar_url"] == "https://example.org/sage.png"


async def test_buttons_keep_working_after_a_restart(world, tmp_path, server):
    hold_second_turn(world)
    await start(world, rounds=2)
    await world.alice.click(status_message(world.thread()), label="Pause")
    await world.env.advance_time(30)
    await world.finish(1)
    fresh = create_bot(make_settings(tmp_path, server))
    await world.crash()
    await world.env.restart_bot(fresh)
    result = await world.alice.click(status_message(world.thread()), label="Resume")
    assert "Resuming dialogue 1" in result.response.content
    await fresh.relays.wait(1)
    await world.env.settle()
    assert (await fresh.services.store.get_dialogue(1)).stop_reason is StopReason.MAX_ROUNDS
    assert len(persona_posts(world.thread())) == 4


async def test_a_discord_error_on_a_post_delays_the_turn_and_drops_nothing(world):
    world.env.inject_error("POST", "/webhooks/*", status=500, times=1)
    await start(world, rounds=1)
    await world.finish(1)
    assert [m.author.name for m in persona_posts(world.thread())] == ["claude-opus-4.6", "glm-5"]


async def test_one_dialogue_failing_leaves_another_running(world):
    await world.bot.services.guilds.update(world.guild.id, max_concurrent=5)
    hold_second_turn(world)
    await start(world, rounds=2)
    hold_second_turn(world)
    await start(world, rounds=2, member=world.bob)
    first, second = world.channel.threads
    await world.bot.get_channel(first.id).delete()
    await world.env.advance_time(30)
    await world.finish(1)
    await world.finish(2)
    store = world.bot.services.store
    assert (await store.get_dialogue(1)).stop_reason is StopReason.THREAD_GONE
    assert (await store.get_dialogue(2)).stop_reason is StopReason.MAX_ROUNDS
    assert len(persona_posts(second)) == 4


async def test_a_transcript_over_the_upload_limit_is_compressed(world):
    await start(world, rounds=1)
    await world.finish(1)
    files = await transcript_files(world.bot.services.store, 1, size_limit=100)
    # The picture, which compression cannot shrink, is left out; the transcripts never are.
    assert [f.filename for f in files] == ["transcript-1.md.gz", "transcript-1.json.gz"]
    assert gzip.decompress(files[0].fp.read()).decode().startswith("# Voices Chat")


async def test_a_failed_post_is_tried_again_at_the_next_flush_and_the_dialogue_goes_on(world):
    world.env.inject_error(
        "POST", "/webhooks/*", status=400, code=50035, message="Invalid Form Body", times=1
    )
    await start(world, rounds=1)
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.stop_reason is StopReason.MAX_ROUNDS
    assert [m.author.name for m in persona_posts(world.thread())] == ["claude-opus-4.6", "glm-5"]


@pytest.mark.local
@pytest.mark.skipif(not local_available(), reason="the voices[local] extra is not installed")
@pytest.mark.simcord(settle_timeout=120)  # the real model writes two replies inside one settle
async def test_local_personas_talk_in_discord_and_obey_the_allowed_list(world):
    await world.bot.services.guilds.update(world.guild.id, allowed_models=frozenset({OPUS}))
    refused = await start(world, a="ada", b="basil", rounds=1)
    assert "local:default is not allowed in this server" in refused.response.content
    await world.bot.services.guilds.update(world.guild.id, allowed_models=None)
    await start(world, a="ada", b="basil", rounds=1)
    await world.finish(1)
    # A small model may run into its token limit, which adds the line saying so under its voice.
    replies = [m for m in persona_posts(world.thread()) if not m.content.startswith("*✂ Stopped at")]
    assert [m.author.name for m in replies] == ["Ada", "Basil"]
    assert world.server.chat_requests == []


async def test_a_member_who_manages_threads_may_stop_anyones_dialogue(world):
    mods = world.guild.create_role("mods", permissions=discord.Permissions(manage_threads=True))
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[mods])
    hold_second_turn(world)
    await start(world, rounds=3)
    result = await carol.click(status_message(world.thread()), label="Stop")
    assert "Stopping dialogue 1" in result.response.content
    await world.finish(1)
    assert (await world.bot.services.store.get_dialogue(1)).stop_reason is StopReason.USER_STOP


async def test_stop_after_the_turn_lets_the_reply_in_flight_finish(world):
    hold_second_turn(world)
    await start(world, rounds=3)
    result = await world.alice.slash(world.thread(), "voices stop", after_turn=True)
    assert "Stopping dialogue 1 after the turn in flight." in result.response.content
    await world.env.advance_time(30)
    await world.finish(1)
    turns = await world.bot.services.store.list_turns(1)
    assert [t.status.value for t in turns] == ["ok", "ok"]
    assert (await world.bot.services.store.get_dialogue(1)).stop_reason is StopReason.USER_STOP


async def test_a_restart_during_a_waiting_closing_edit_still_shows_the_whole_reply(
    world, tmp_path, server, monkeypatch
):
    # Hold the closing edit back past the restart, as a crash inside its second would.
    held = {"on": True}

    async def held_pause(seconds: float) -> None:
        await asyncio.sleep(3600 if held["on"] else seconds)

    monkeypatch.setattr("cogs.relay.pause", held_pause)
    limited = {"error": {"code": 429, "message": "slow down"}}
    full = "one two three four five six seven"
    world.server.enqueue(
        # Pieces apart in time, or the display (which takes what queued up as one) posts them at once.
        Reply(text=full, chunk_words=2, chunk_delay=0.05),
        Reply(status=429, headers={"Retry-After": "30"}, error=limited),
    )
    await start(world, rounds=2)
    assert persona_posts(world.thread())[0].content == "one two "
    fresh = create_bot(make_settings(tmp_path, server))
    await world.crash()
    await world.env.restart_bot(fresh)
    held["on"] = False
    for _ in range(60):
        await world.env.advance_time(1.0)
        ended = (await fresh.services.store.get_dialogue(1)).status.is_final
        if ended and not fresh.relays.is_running(1):
            break
    posts = persona_posts(world.thread())
    assert posts[0].content == full
    assert [m.author.name for m in posts] == ["claude-opus-4.6", "glm-5"] * 2


async def test_the_status_shows_the_prompt_cache_saving_and_the_thread_shows_a_loop(world):
    again = "What a wonderful thought. I feel the same gratitude for this shared moment of reflection."
    world.server.enqueue(
        Reply(text="Lighthouses: lonely, or only alone?"),
        Reply(text=again),
        Reply(text="Truly. " + again),
        Reply(text="Yes. " + again),
    )
    await start(world, rounds=3, on_loop="notify")
    await world.finish(1)
    thread = world.thread()
    fields = {f.name: f.value for f in status_message(thread).embeds[0].fields}
    assert fields["Prompt cache"].startswith("read ") and "saved $" in fields["Prompt cache"]
    notices = [
        m.content for m in thread.history() if m.webhook_id is None and "Going in circles" in m.content
    ]
    assert notices == [
        "🔁 Going in circles (repetition): the last 2 turns repeat recent ones (similarity 0.93)"
    ]
    document = json.loads(await thread.history()[-1].attachments[1].read())
    assert [n["kind"] for n in document["notes"]] == ["repetition"]
    assert document["dialogue"]["loop_action"] == "notify"
    assert document["dialogue"]["context_policy"] == "compact"  # the deployment's default


async def test_on_loop_stop_ends_the_dialogue_as_convergence(world):
    again = "What a wonderful thought. I feel the same gratitude for this shared moment of reflection."
    world.server.enqueue(
        Reply(text="A first thought."), Reply(text=again), Reply(text=again), Reply(text=again)
    )
    await start(world, rounds=5, on_loop="stop")
    await world.finish(1)
    dialogue = await world.bot.services.store.get_dialogue(1)
    assert dialogue.stop_reason is StopReason.CONVERGENCE
    assert (
        status_message(world.thread())
        .embeds[0]
        .description.startswith("**Ended:** the dialogue was going in circles")
    )


@pytest.mark.settings(summary_model=GLM)
async def test_a_compaction_is_shown_in_the_thread_with_its_summary(world):
    long = [f"Turn {i}: " + " ".join(f"t{i}w{j}" for j in range(60)) for i in range(8)]
    world.server.enqueue_for("tiny/short-context", *(Reply(text=text) for text in long))
    world.server.enqueue_for(GLM, Reply(text="They have counted, at length, and agree on little."))
    await start(world, a="tiny/short-context", b="tiny/short-context", rounds=4, context="compact")
    await world.finish(1)
    own = [m.content for m in world.thread().history() if m.webhook_id is None and not m.embeds]
    headline = next(c for c in own if c.startswith("⟲ Context compacted"))
    assert "by z-ai/glm-5" in headline
    assert own[own.index(headline) + 1] == "They have counted, at length, and agree on little."


async def test_a_discord_answering_429_holds_neither_the_dialogue_nor_any_turns_text(world, caplog):
    """Every persona post and edit is refused for a while (past discord.py's own retries): the
    dialogue runs on regardless, and afterwards the thread holds every turn's whole text."""
    world.env.inject_error(
        "*", "/webhooks/*/simcord_webhook_*", status=429, message="You are being rate limited.", times=8
    )
    world.server.enqueue(*[Reply(text=f"Reply {i}: " + "word " * 30, chunk_words=3) for i in range(4)])
    await start(world, rounds=2)
    await world.finish(1)
    store = world.bot.services.store
    assert (await store.get_dialogue(1)).stop_reason is StopReason.MAX_ROUNDS
    turns = await store.list_turns(1)
    posts = persona_posts(world.thread())
    assert [m.content for m in posts] == [t.text for t in turns]
    assert "Discord refused turn 1's text" in caplog.text  # the end of the turn was tried again
    assert not [m for m in world.thread().history() if "kept refusing" in m.content]
    # The metrics counted each 429 that discord.py reported as it waited and retried.
    metrics = world.bot.services.metrics.exposition().decode()
    limited = float(metrics.split("\nvoices_discord_rate_limited_total ")[1].split()[0])
    assert limited == 8  # every refusal injected


async def test_a_restarted_bot_takes_a_dialogue_over_once_the_dead_process_lease_lapses(
    world, tmp_path, server, caplog
):
    """The bot died holding the dialogue's lease (kill -9: nothing released it). The new bot finds it
    held, waits for it to lapse, then carries the dialogue on, each turn posted once."""
    hold_second_turn(world)
    await start(world, rounds=2)
    await world.crash()
    async with Store.open(tmp_path / "voices.db") as dead:
        await dead.take_lease(1, 1.0)  # what the dead process last renewed
    fresh = create_bot(make_settings(tmp_path, server))
    await world.env.restart_bot(fresh)
    store = fresh.services.store
    for _ in range(60):
        await world.env.advance_time(1.0)
        if (await store.get_dialogue(1)).status.is_final and not fresh.relays.is_running(1):
            break
    assert (await store.get_dialogue(1)).stop_reason is StopReason.MAX_ROUNDS
    posts = persona_posts(world.thread())
    assert [m.author.name for m in posts] == ["claude-opus-4.6", "glm-5"] * 2
    assert len({m.content for m in posts}) == 4
    assert "is being run by another process" in caplog.text and "trying again then" in caplog.text


async def test_usage_reports_spend_to_managers_and_each_member_their_own(world):
    await start(world, rounds=1)
    await world.finish(1)
    await start(world, member=world.bob, rounds=1)
    await world.finish(2)
    store = world.bot.services.store
    alice_spent = (await store.get_dialogue(1)).totals.spent_usd
    bob_spent = (await store.get_dialogue(2)).totals.spent_usd
    manager_role = world.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[manager_role])

    everyone = await carol.slash(world.channel, "voices usage", period="all")
    assert everyone.ephemeral
    text = everyone.response.content
    assert text.startswith("**Usage of this server, all:**") and "over 2 dialogues" in text
    assert f"<@{world.alice.id}>" in text and f"<@{world.bob.id}>" in text
    assert "caps per day: server $" in text
    files = {a.filename: (await a.read()).decode() for a in everyone.response.attachments}
    assert set(files) == {"usage-by-member.csv", "usage-by-model.csv", "usage-by-day.csv"}
    for csv_text in files.values():
        # Exact decimals that add up to what the dialogues spent, to the digit.
        amounts = [Decimal(line.rsplit(",", 1)[1]) for line in csv_text.splitlines()[1:]]
        assert sum(amounts) == alice_spent + bob_spent
    members = dict(line.split(",", 1) for line in files["usage-by-member.csv"].splitlines()[1:])
    assert Decimal(members[str(world.alice.id)].rsplit(",", 1)[1]) == alice_spent

    own = await world.bob.slash(world.channel, "voices usage")
    assert own.response.content.startswith(f"**Usage of <@{world.bob.id}>, 30 days:**")
    own_files = {a.filename: (await a.read()).decode() for a in own.response.attachments}
    assert (
        sum(Decimal(line.rsplit(",", 1)[1]) for line in own_files["usage-by-model.csv"].splitlines()[1:])
        == bob_spent
    )
    refused = await world.bob.slash(world.channel, "voices usage", member=world.alice)
    assert refused.response.content == (
        "⚠ another member's usage needs the Manage Server permission; leave member empty"
    )
    # Nothing pings: the members are named, never notified.
    payload = next(r for r in sent_payloads_all(world) if "Usage of this server" in str(r.json))
    assert payload.json["data"]["allowed_mentions"] == {"parse": []}


def sent_payloads_all(world):
    return [r for r in world.env.http_requests if r.method == "POST" and isinstance(r.json, dict)]


async def test_the_thread_begins_with_the_opening_and_status_shows_the_system_prompts(world):
    await start(
        world, rounds=1, opening="What is @everyone afraid of?\n\nAnswer <@123> too.", system_a="Be Claude."
    )
    await world.finish(1)
    thread = world.thread()
    first = thread.history()[0]
    assert first.webhook_id is None and not first.embeds
    assert first.content == (
        f"<@{world.alice.id}> opened dialogue 1 with:\n"
        "> What is @everyone afraid of?\n>\n> Answer <@123> too.\n"
        "**Voices:** **claude-opus-4.6** (`anthropic/claude-opus-4.6`) · **glm-5** (`z-ai/glm-5`)"
    )
    (sent,) = [r for r in sent_payloads(world) if "opened dialogue 1" in str(r.json)]
    assert sent.json["allowed_mentions"] == {"parse": []}  # names the asker, pings nobody
    shown = await world.bob.slash(thread, "voices status")
    prompts = shown.response.embeds[1]
    assert prompts.title == "System prompts"
    assert [(f.name, f.value) for f in prompts.fields][0] == ("claude-opus-4.6", "Be Claude.")


async def test_a_dialogue_in_a_channel_a_member_cannot_see_stays_hidden_from_them(world):
    """Named by its id from a public channel, a private channel's dialogue was there for anyone in
    the server: its transcript posted for all to read, its prompts shown, a fork or a continuation
    holding its turns opened where everyone reads them, and its line in `/voices list`."""
    hidden = discord.PermissionOverwrite(view_channel=False)
    staff = world.guild.create_text_channel(
        "staff",
        overwrites={
            world.guild.default_role: hidden,
            world.alice: discord.PermissionOverwrite(view_channel=True),
            world.guild.me: discord.PermissionOverwrite(view_channel=True),
        },
    )
    options = {"a": OPUS, "b": GLM, "opening": "The secret plan.", "rounds": 1, "budget": "0.25"}
    await world.alice.slash(staff, "voices start", **options)
    await world.finish(1)
    for command, extra in (
        ("voices transcript", {}),
        ("voices status", {}),
        ("voices fork", {"turn": 1}),
        ("voices continue", {}),
    ):
        refused = await world.bob.slash(world.channel, command, dialogue=1, **extra)
        assert refused.ephemeral, command
        assert "no dialogue 1 in this server; `/voices list` shows them" in refused.response.content, command
        assert not refused.response.attachments
    assert world.channel.threads == [] and len(await world.bot.services.rooms.recent(world.guild.id)) == 1
    assert "secret plan" not in " ".join(m.content for m in world.channel.history())
    unlisted = await world.bob.slash(world.channel, "voices list")
    assert "No dialogues yet" in unlisted.response.content
    listed = await world.alice.slash(world.channel, "voices list")
    assert "**1** · claude-opus-4.6 ↔ glm-5" in listed.response.content
    fetched = await world.alice.slash(staff, "voices transcript", dialogue=1)
    assert [a.filename for a in fetched.response.attachments][:2] == ["transcript-1.md", "transcript-1.json"]


async def test_a_dialogue_whose_channel_was_deleted_is_its_starters_and_the_managers(world):
    """What a deleted channel hid cannot be asked of it any more: its dialogues' transcripts are
    left to whoever started them and to those who manage the server."""
    side = world.guild.create_text_channel("side")
    await world.alice.slash(side, "voices start", a=OPUS, b=GLM, opening="Hi", rounds=1, budget="0.25")
    await world.finish(1)
    await world.bot.get_channel(side.id).delete()
    await world.env.settle()
    assert world.bot.get_channel(side.id) is None
    refused = await world.bob.slash(world.channel, "voices transcript", dialogue=1)
    assert "no dialogue 1 in this server" in refused.response.content and not refused.response.attachments
    managers = world.guild.create_role("managers", permissions=discord.Permissions(manage_guild=True))
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[managers])
    for member in (world.alice, carol):
        fetched = await member.slash(world.channel, "voices transcript", dialogue=1)
        files = [a.filename for a in fetched.response.attachments]
        assert files[:2] == ["transcript-1.md", "transcript-1.json"]


async def test_a_moderator_of_one_channel_cannot_stop_a_dialogue_in_another(world):
    """Manage Threads counts where the dialogue is: granted in #general alone, it reached every
    dialogue the member could name from there."""
    mods = world.guild.create_role("thread-mods")
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[mods])
    general = world.guild.create_text_channel(
        "moderated", overwrites={mods: discord.PermissionOverwrite(manage_threads=True)}
    )
    hold_second_turn(world)
    await start(world, rounds=3)  # in world.channel, where carol manages nothing
    refused = await carol.slash(general, "voices stop", dialogue=1)
    assert "only whoever started this dialogue, or members who can manage threads" in refused.response.content
    assert world.bot.relays.is_running(1)
    await world.alice.slash(world.thread(), "voices stop")
    await world.finish(1)
    assert (await world.bot.services.store.get_dialogue(1)).stop_reason is StopReason.USER_STOP


async def test_a_reply_cut_at_its_token_limit_is_marked_in_the_thread_under_its_voice(world):
    cut = Reply(text="A thought that runs on and", finish_reason="length")
    world.server.enqueue(cut, Reply(text="Whole."))
    await start(world, rounds=1)
    await world.finish(1)
    posts = [(m.author.name, m.content) for m in persona_posts(world.thread())]
    marker = "*✂ Stopped at the reply's token limit (max_tokens); it may end mid-sentence.*"
    assert posts[:3] == [
        ("claude-opus-4.6", "A thought that runs on and"),
        ("claude-opus-4.6", marker),
        ("glm-5", "Whole."),
    ]
