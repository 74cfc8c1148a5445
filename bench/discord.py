"""Discord calls per turn: a 1,500-character reply streamed over 30 s, posted through the real bot.

SimCord stands in for Discord and counts every call; the bot's own webhook pool notes when each
edit went out. Targets: ≤ 35 calls for the turn, never more than one edit a second per message.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import simcord
from simcord._dpy_internals import real_monotonic

from bench.harness import MODELS, fake_server
from cogs import create_bot, relay
from cogs.webhooks import WebhookPool
from config import Settings

CHARS = 1500


async def real_pause(seconds: float) -> None:
    """Wait real time: SimCord's clock only moves when told to, and SimCord waits for executor work."""
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, seconds)


def bot_settings(folder: str, base_url: str) -> Settings:
    """Return the bot's settings for a benchmark: the fake server, a fresh database, caps that never bind."""
    return Settings(
        _env_file=None,
        openrouter_api_key="bench",
        openrouter_base_url=base_url,
        database=Path(folder) / "bench.db",
        discord_token="bench",
        default_max_tokens=4000,
        max_budget="100",
        daily_cap_guild="100",
        daily_cap_member="100",
        max_concurrent=10,
        shard_count=1,  # SimCord has no gateway to ask how many
    )


async def measure(seconds: float) -> dict[str, str]:
    """Stream one reply of about 1,500 characters over `seconds` and count what reached Discord."""
    words = CHARS // 5  # "w123 " is about five characters
    edits: list[tuple[float, int]] = []
    original_edit = WebhookPool.edit

    async def timed_edit(self: WebhookPool, thread, message_id: int, content: str) -> None:  # noqa: ANN001
        edits.append((real_monotonic(), message_id))
        await original_edit(self, thread, message_id, content)

    WebhookPool.edit = timed_edit  # type: ignore[method-assign]

    virtual_now, relay.now = relay.now, real_monotonic
    virtual_pause, relay.pause = relay.pause, real_pause
    try:
        async with fake_server(seconds / words, words) as server:
            with tempfile.TemporaryDirectory() as folder:
                bot = create_bot(bot_settings(folder, server.base_url))
                async with simcord.run(bot, settle_timeout=seconds * 4 + 30) as env:
                    guild = env.create_guild()
                    channel = guild.create_text_channel("general")
                    alice = guild.add_member(env.create_user("alice"))
                    before = len(env.http_requests)
                    await alice.slash(
                        channel, "voices start", a=MODELS[0], b=MODELS[1], opening="Go.", rounds=1, budget="5"
                    )
                    await bot.relays.wait(1)
                    await env.settle()
                    calls = env.http_requests[before:]
                    turn = await bot.services.store.list_turns(1)
                await bot.close()  # SimCord detaches the bot without closing it
    finally:
        WebhookPool.edit = original_edit  # type: ignore[method-assign]
        relay.now = virtual_now
        relay.pause = virtual_pause
    webhook_calls = [
        c for c in calls if c.path.startswith("/webhooks/") and "simcord_interaction" not in c.path
    ]
    per_turn = len(webhook_calls) / len(turn)
    first_message = edits[0][1] if edits else None
    times = [at for at, message in edits if message == first_message]
    shortest = min((b - a for a, b in zip(times, times[1:], strict=False)), default=float("nan"))
    return {
        "reply length": f"{len(turn[0].text)} characters over {seconds:g} s",
        "webhook calls per turn (sends + edits)": f"{per_turn:.1f}",
        "edits of the first message": str(len(times)),
        "shortest gap between two of its edits": f"{shortest:.2f} s",
        "all Discord calls for the dialogue": str(len(calls)),
    }
