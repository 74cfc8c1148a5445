"""What spectators get in Discord beyond the turns: the referee, the audience vote, the picture of the
dialogue and dialogues on a schedule. SimCord drives the real bot against the loopback OpenRouter."""

from __future__ import annotations

import io
import json

from PIL import Image

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
