"""`/voices` end to end: SimCord drives the real command tree against the loopback OpenRouter."""

from __future__ import annotations

import json

from tests.conftest import GLM, OPUS


async def start(world, **options):
    values = {"a": OPUS, "b": GLM, "opening": "Hello there.", "rounds": 2, "budget": "0.25"} | options
    return await world.alice.slash(world.channel, "voices start", **values)


async def test_start_runs_a_dialogue_in_a_thread_as_two_personas(world):
    result = await start(world)
    assert result.ephemeral and result.response.content.startswith("Started dialogue 1 in <#")
    await world.finish(1)
    thread = world.thread()
    assert thread.name == "claude-opus-4.6 ↔ glm-5"
    history = thread.history()
    authors = [m.author.name for m in history]
    print(authors, [m.content[:40] for m in history])
    assert authors.count("claude-opus-4.6") == 2 and authors.count("glm-5") == 2
    files = [a.filename for m in history for a in m.attachments]
    assert files == ["transcript-1.md", "transcript-1.json"]
