"""People in the dialogue, through SimCord: a member's seat, interjections, more voices, continuations
and forks, against the real command tree, buttons, modals, threads and webhooks."""

from __future__ import annotations

import json

import pytest

from bot.models import NoteKind, Status, StopReason
from cogs import create_bot
from tests.cogs.conftest import make_settings
from tests.cogs.test_voices_cog import hold_second_turn, persona_posts, start, status_message
from tests.conftest import GLM, OPUS
from tests.fake_openrouter import Reply, plain, text_of

TINY = "tiny/short-context"


def asking(thread):
    """The bot's Your turn message, if there is one."""
    return [m for m in thread.history() if m.webhook_id is None and "your turn as" in m.content]


async def transcript(thread):
    return json.loads(await thread.history()[-1].attachments[1].read())


async def test_a_member_takes_a_seat_and_speaks_through_the_button_and_modal(world):
    result = await start(world, a="me", b=GLM, rounds=1)
    assert "Started dialogue 1" in result.response.content
    await world.env.settle()
    thread = world.thread()
    (ask,) = asking(thread)
    assert ask.content.startswith(f"<@{world.alice.id}>, your turn as **alice** (round 1)")
    assert status_message(thread).embeds[0].description == "**Waiting for:** alice"
    # Bob may not speak in Alice's seat.
    refused = await world.bob.click(ask, label="Your turn")
    assert refused.ephemeral and "you have no seat in dialogue 1" in refused.response.content
    shown = await world.alice.click(ask, label="Your turn")
    assert shown.modal["title"] == "Your turn as alice"
    await world.alice.submit_modal(shown, {"words": "Hello, I am Alice, and I am a person."})
    await world.finish(1)
    posts = persona_posts(thread)
    assert [(m.author.name, m.content) for m in posts][0] == (
        "alice",
        "Hello, I am Alice, and I am a person.",
    )
    assert posts[1].author.name == "glm-5"
    assert asking(thread) == []  # the Your turn message went once she answered
    # Only GLM was called, and it read her words.
    (request,) = world.server.chat_requests
    assert plain(request.body["messages"])[-1]["content"].endswith("Hello, I am Alice, and I am a person.")
    document = await transcript(thread)
    assert document["participants"][0]["human"] is True
    assert document["turns"][0]["cost_source"] == "human" and document["turns"][0]["cost_usd"] == "0"


async def test_a_member_speaks_with_voices_say_and_only_in_their_turn(world):
    await start(world, a=GLM, b="me", rounds=1)
    await world.env.settle()
    thread = world.thread()
    result = await world.alice.slash(thread, "voices say", text="Thank you, GLM.")
    assert result.ephemeral and result.response.content.startswith("Sent")
    await world.finish(1)
    assert [m.author.name for m in persona_posts(thread)] == ["glm-5", "alice"]
    assert (await transcript(thread))["turns"][1]["text"] == "Thank you, GLM."


@pytest.mark.settings(human_timeout=30)
async def test_a_member_who_misses_the_timeout_pauses_the_dialogue_and_answering_resumes_it(world):
    await start(world, a="me", b=GLM, rounds=1)
    await world.env.settle()
    await world.env.advance_time(31)
    await world.env.settle()
    thread = world.thread()
    store = world.bot.services.store
    assert (await store.get_dialogue(1)).status is Status.PAUSED
    (ask,) = [m for m in thread.history() if "Paused, waiting for **alice**" in m.content]
    shown = await world.alice.click(ask, label="Your turn")
    await world.alice.submit_modal(shown, {"words": "Sorry, I was away."})
    await world.finish(1)
    assert (await store.get_dialogue(1)).stop_reason is StopReason.MAX_ROUNDS
    assert [m.content for m in persona_posts(thread)][0] == "Sorry, I was away."
    assert not any("Paused, waiting" in m.content for m in thread.history())  # answered: it went


async def test_an_interjection_reaches_both_models_exactly_once(world):
    hold_second_turn(world)
    await start(world, rounds=2)
    await world.env.settle()
    thread = world.thread()
    result = await world.alice.slash(thread, "voices interject", text="Please talk about the sea.")
    # The second turn's call is out (waiting out a 429): the note comes after that turn.
    assert result.ephemeral and result.response.content == "Noted: every model reads it before turn 3."
    await world.finish(1)
    label = "[alice, watching, interjects:] Please talk about the sea."
    requests = [r.body for r in world.server.chat_requests]
    counts = [("\n".join(text_of(m["content"]) for m in body["messages"])).count(label) for body in requests]
    assert counts == [0, 0, 0, 1, 1]  # turn 1, turn 2 (429, then its retry), turns 3 and 4
    assert [body["model"] for body in requests[3:]] == [OPUS, GLM]
    notices = [m.content for m in thread.history() if m.webhook_id is None and "interjects" in m.content]
    assert notices == ["💬 alice interjects: Please talk about the sea."]
    document = await transcript(thread)
    assert [(n["kind"], n["author"], n["before_seq"]) for n in document["notes"]] == [
        ("interjection", "alice", 2)
    ]


async def test_only_the_starter_and_the_configured_role_may_interject_and_not_too_often(world):
    hold_second_turn(world, seconds=300)
    await start(world, rounds=2)
    await world.env.settle()
    thread = world.thread()
    refused = await world.bob.slash(thread, "voices interject", text="Me too!")
    assert refused.ephemeral
    assert refused.response.content == (
        "⚠ only whoever started this dialogue may interject; "
        "a server manager can choose a role with /voices config interject_role"
    )
    clicked = await world.bob.click(status_message(thread), label="Interject")
    assert "only whoever started this dialogue may interject" in clicked.response.content
    # A role for spectators: a member who has it may.
    role = world.guild.create_role("spectators")
    carol = world.guild.add_member(world.env.create_user("carol"), roles=[role])
    await world.bot.services.guilds.update(world.guild.id, interject_role=role.id)
    shown = await carol.click(status_message(thread), label="Interject")
    assert shown.modal["title"] == "Interject"
    done = await carol.submit_modal(shown, {"words": "Say something about birds."})
    assert done.response.content.startswith("Noted")
    again = await carol.slash(thread, "voices interject", text="And fish.")
    assert "you can interject again in 60 s" in again.response.content
    notes = await world.bot.services.store.list_notes(1)
    assert [(n.kind, n.author, n.text) for n in notes] == [
        (NoteKind.INTERJECTION, "carol", "Say something about birds.")
    ]
    await world.alice.slash(thread, "voices stop")
    await world.finish(1)


async def test_three_voices_in_one_thread(world):
    await start(world, c=TINY, rounds=1)
    await world.finish(1)
    thread = world.thread()
    assert thread.name == "claude-opus-4.6 ↔ glm-5 ↔ short-context"
    assert [m.author.name for m in persona_posts(thread)] == ["claude-opus-4.6", "glm-5", "short-context"]
    fields = [f.name for f in status_message(thread).embeds[0].fields]
    assert sum(1 for f in fields if " · " in f) == 3
    document = await transcript(thread)
    assert [p["name"] for p in document["participants"]] == ["claude-opus-4.6", "glm-5", "short-context"]


async def test_a_fork_from_turn_3_holds_exactly_turns_1_to_3_in_a_new_thread(world):
    await start(world, rounds=3)
    await world.finish(1)
    first = world.thread()
    result = await world.alice.slash(first, "voices fork", dialogue=1, turn=3, rounds=1, budget="0.25")
    assert "Started dialogue 2 in <#" in result.response.content
    await world.finish(2)
    fork_thread = world.thread()
    assert fork_thread.id != first.id and fork_thread.name.endswith("(fork)")
    opening = [m.content for m in fork_thread.history() if m.webhook_id is None and not m.embeds]
    assert opening[0].startswith(f"Forked from dialogue 1 (<#{first.id}>) at turn 3")
    # Only the new turns are posted; the three carried over are in the transcript.
    assert len(persona_posts(fork_thread)) == 3
    parent_turns = await world.bot.services.store.list_turns(1)
    document = await transcript(fork_thread)
    held = [t for t in document["turns"] if t["inherited"]]
    assert [t["text"] for t in held] == [t.text for t in parent_turns[:3]]
    assert document["dialogue"]["parent"] == {"id": 1, "kind": "fork", "turns": 3}
    assert any("↪ Dialogue 2 goes on from here" in m.content for m in first.history())
    listed = await world.alice.slash(world.channel, "voices list")
    assert "**2** · claude-opus-4.6 ↔ glm-5 · max_rounds" in listed.response.content
    assert "fork of 1 at turn 3" in listed.response.content


@pytest.mark.settings(summary_model=GLM)
async def test_a_continuation_remembers_a_summary_in_its_new_system_prompts(world):
    server = world.server
    long = [f"Turn {i}: " + " ".join(f"t{i}w{j}" for j in range(60)) for i in range(8)]
    server.enqueue_for(TINY, *(Reply(text=text) for text in long))
    await start(world, a=TINY, b=TINY, rounds=4, context="truncate")
    await world.finish(1)
    summary = "The two voices counted words and never agreed on why."
    server.enqueue_for(GLM, Reply(text=summary))
    before = len(server.chat_requests)
    result = await world.alice.slash(world.channel, "voices continue", dialogue=1, rounds=1, budget="0.25")
    assert "Started dialogue 2" in result.response.content
    await world.finish(2)
    thread = world.thread()
    assert thread.name.endswith("(continued)")
    notice = [m.content for m in thread.history() if m.webhook_id is None and not m.embeds][0]
    assert notice.startswith("Continues dialogue 1") and "remembers it in a summary" in notice
    asked = server.chat_requests[before:]
    assert asked[0].body["model"] == GLM  # the summary, paid from the new budget
    assert len(asked) == 3
    for request in asked[1:]:
        system = plain(request.body["messages"])[0]["content"]
        assert "have spoken with" in system and summary in system
    store = world.bot.services.store
    memory = (await store.list_notes(2))[0]
    assert (await store.get_dialogue(2)).totals.spent_usd >= memory.cost_usd > 0


@pytest.mark.parametrize("command", ["voices fork", "voices continue"])
async def test_branching_an_unknown_dialogue_is_one_line(world, command):
    options = {"dialogue": 99, "turn": 1} if command == "voices fork" else {"dialogue": 99}
    result = await world.alice.slash(world.channel, command, **options)
    assert result.ephemeral
    assert result.response.content == "⚠ no dialogue 99 in this server; `/voices list` shows them"


async def test_a_note_left_while_paused_is_shown_in_its_place_when_the_dialogue_goes_on(world):
    hold_second_turn(world)
    await start(world, rounds=2)
    await world.env.settle()
    thread = world.thread()
    await world.alice.click(status_message(thread), label="Pause")
    await world.env.advance_time(30)
    await world.finish(1)
    assert (await world.bot.services.store.get_dialogue(1)).status is Status.PAUSED
    result = await world.alice.slash(thread, "voices interject", text="Now about mountains.")
    assert result.response.content == "Noted: every model reads it before turn 3, when the dialogue goes on."
    assert not any("mountains" in m.content for m in thread.history())
    await world.alice.click(status_message(thread), label="Resume")
    await world.finish(1)
    contents = [m.content for m in thread.history()]
    note = contents.index("💬 alice interjects: Now about mountains.")
    turn_3 = next(
        i for i, m in enumerate(thread.history()) if m.webhook_id and m.content.startswith("Reply 4")
    )
    assert note < turn_3


async def test_empty_words_are_refused_and_change_nothing(world):
    await start(world, a="me", b=GLM, rounds=1)
    await world.env.settle()
    thread = world.thread()
    said = await world.alice.slash(thread, "voices say", text="   ")
    assert said.response.content == "⚠ your words are empty; say something"
    noted = await world.alice.slash(thread, "voices interject", text="  ")
    assert noted.response.content == "⚠ the interjection is empty; say something"
    assert await world.bot.services.store.list_turns(1) == []
    assert await world.bot.services.store.list_notes(1) == []
    assert len(asking(thread)) == 1  # still waiting for her
    await world.alice.slash(thread, "voices stop")
    await world.finish(1)


async def test_a_restart_while_a_member_is_due_asks_once_again_and_their_answer_is_kept(
    world, tmp_path, server
):
    await start(world, a=GLM, b="me", rounds=1)
    await world.env.settle()
    assert len(asking(world.thread())) == 1
    fresh = create_bot(make_settings(tmp_path, server))
    await world.crash()
    await world.env.restart_bot(fresh)
    await world.env.settle()
    thread = world.thread()
    (ask,) = asking(thread)  # asked again, in place of the message the old run posted
    shown = await world.alice.click(ask, label="Your turn")
    await world.alice.submit_modal(shown, {"words": "Still here after the restart."})
    await world.env.settle()
    await fresh.relays.wait(1)
    await world.env.settle()
    assert (await fresh.services.store.get_dialogue(1)).stop_reason is StopReason.MAX_ROUNDS
    assert [m.content for m in persona_posts(thread)][1] == "Still here after the restart."
    assert len(world.server.chat_requests) == 1  # GLM's turn was not asked for twice


async def test_forgetting_a_member_reaches_their_turns_notes_openings_and_every_copy(world):
    """Alice sits in a seat, opens, interjects; the dialogue is forked and continued; she asks to be
    forgotten. Her words are gone from every copy, the models' words and the costs stay."""
    await start(world, a="me", b=GLM, rounds=2, opening="My secret question about Alice's life.")
    await world.env.settle()
    thread = world.thread()
    await world.alice.slash(thread, "voices say", text="Alice's private words, turn one.")
    await world.env.settle()
    await world.alice.slash(thread, "voices interject", text="Alice's private note.")
    await world.alice.slash(thread, "voices say", text="Alice's private words, turn three.")
    await world.finish(1)
    await world.bob.slash(world.channel, "voices fork", dialogue=1, turn=2, rounds=1, budget="0.25")
    await world.finish(2)
    await world.bob.slash(world.channel, "voices continue", dialogue=1, rounds=1, budget="0.25")
    await world.env.settle()
    await world.alice.slash(world.thread(), "voices say", text="Alice's private words, continued.")
    await world.finish(3)
    store = world.bot.services.store
    assert (await store.get_dialogue(3)).parent.kind.value == "continue"
    spent_before = [(await store.get_dialogue(i)).totals.spent_usd for i in (1, 2, 3)]
    glm_words = [t.text for t in await store.list_turns(1) if not t.is_human]

    # Bob may not forget Alice; Alice may forget herself.
    refused = await world.bob.slash(world.channel, "voices forget", member=world.alice)
    assert "needs the Manage Server permission" in refused.response.content
    done = await world.alice.slash(world.channel, "voices forget")
    assert done.ephemeral and done.response.content.startswith("Removed your words")

    for dialogue_id in (1, 2, 3):
        markdown = await world.bot.services.store.history(dialogue_id)
        dialogue, turns, notes = markdown[0], markdown[1], markdown[2]
        everything = json.dumps(
            [
                dialogue.opening,
                [t.text for t in turns],
                [n.text for n in notes],
                [p.name for p in dialogue.participants],
            ]
        )
        assert "Alice" not in everything and "alice" not in everything, everything
        assert str(world.alice.id) not in json.dumps([p.model for p in dialogue.participants])
        assert dialogue.opening == "[removed at the member's request]"
        assert [t.text for t in turns if t.is_human] and all(
            t.text == "[removed at the member's request]" for t in turns if t.is_human
        )
    assert [t.text for t in await store.list_turns(1) if not t.is_human] == glm_words
    assert [(await store.get_dialogue(i)).totals.spent_usd for i in (1, 2, 3)] == spent_before
    # A transcript fetched afterwards is regenerated from what is stored now.
    again = await world.bob.slash(world.channel, "voices transcript", dialogue=1)
    text = (await again.response.attachments[0].read()).decode()
    assert "Alice's private" not in text and "removed at the member's request" in text
