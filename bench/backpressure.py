"""Back-pressure: a Discord that answers 429 holds neither the engine nor loses a turn's text, and
dialogues sharing one channel's webhook still see their words in Discord within seconds.

Both run the real bot on SimCord, with the fake OpenRouter in a process of its own:
- storm: every persona post and edit is answered 429 for `storm` seconds while a dialogue streams.
  The engine's relay gap comes from the server's clock; afterwards the thread must hold every
  turn's whole text. Targets: gap p99 ≤ 20 ms; every text there.
- shared: three dialogues stream at once in threads of one channel (one webhook, one rate limit).
  Latency is from a piece of text reaching the display's mailbox to Discord holding a message that
  shows it. Target: p99 ≤ 2 s (edits wait up to a second by design: one per second per message).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import discord
import simcord
from simcord._dpy_internals import real_monotonic

from bench.discord import bot_settings, real_pause
from bench.harness import MODELS, fake_server, gaps_and_streams, ms, percentile, spec
from bot.events import Delta
from bot.mailbox import Mailbox
from bot.rooms import Room
from cogs import create_bot, relay
from cogs.webhooks import WebhookPool


async def storm(storm_seconds: float, rounds: int, words: int, tokens_per_second: float) -> dict[str, str]:
    """Stream one dialogue while Discord refuses every persona post and edit for `storm_seconds`."""
    saved = relay.now, relay.pause
    relay.now, relay.pause = real_monotonic, real_pause
    try:
        async with fake_server(1 / tokens_per_second, words) as server:
            with tempfile.TemporaryDirectory() as folder:
                bot = create_bot(bot_settings(folder, server.base_url))
                async with simcord.run(bot, settle_timeout=storm_seconds * 4 + 120) as env:
                    guild = env.create_guild()
                    channel = guild.create_text_channel("general")
                    alice = guild.add_member(env.create_user("alice"))
                    env.inject_error("*", "/webhooks/*/simcord_webhook_*", status=429, times=None)
                    asyncio.get_running_loop().call_later(storm_seconds, env.backend.faults.clear)
                    started = real_monotonic()
                    await alice.slash(
                        channel,
                        "voices start",
                        a=MODELS[0],
                        b=MODELS[1],
                        opening="Go.",
                        rounds=rounds,
                        budget="5",
                    )
                    await bot.relays.wait(1)
                    await env.settle()
                    took = real_monotonic() - started
                    turns = await bot.services.store.list_turns(1)
                    # SimCord files these posts under the channel or its thread; either way, in order.
                    seen = {m.id: m for m in [*channel.history(), *channel.threads[-1].history()]}
                    posts = [m.content for _, m in sorted(seen.items()) if m.webhook_id is not None]
                await bot.close()
            gaps, _ = gaps_and_streams(server.stats())
    finally:
        relay.now, relay.pause = saved
    return {
        "429s for": f"{storm_seconds:g} s",
        "turns": str(len(turns)),
        "relay gap p50": ms(percentile(gaps, 50)),
        "relay gap p99": ms(percentile(gaps, 99)),
        "every turn's whole text in the thread": str(posts == [t.text for t in turns]),
        "until the thread caught up": f"{took:.1f} s",
    }


async def shared(dialogues: int, rounds: int, words: int, tokens_per_second: float) -> dict[str, str]:
    """Stream `dialogues` dialogues at once in threads of one channel; time words into Discord."""
    arrivals: list[tuple[float, int, str]] = []  # (when, thread, the turn's text so far)
    shown: list[tuple[float, int, str]] = []  # (when, thread, what a message says)
    texts: dict[tuple[int, int], str] = {}
    saved = relay.now, relay.pause, relay.Mailbox, WebhookPool.send, WebhookPool.edit

    class Timed(Mailbox):  # type: ignore[type-arg]
        """The relay's mailbox, noting when each piece of text reaches it."""

        def put(self, item: Any) -> None:
            if isinstance(item, Delta) and not item.reasoning:
                key = (id(self), item.seq)
                texts[key] = texts.get(key, "") + item.text
                arrivals.append((real_monotonic(), id(self), texts[key]))
            super().put(item)

    def timed(original: Callable[..., Any], content_at: int) -> Callable[..., Any]:
        async def call(self: WebhookPool, thread: discord.Thread, *args: Any, **kwargs: Any) -> Any:
            result = await original(self, thread, *args, **kwargs)
            content = args[content_at] if len(args) > content_at else kwargs.get("content", "")
            shown.append((real_monotonic(), thread.id, content))
            return result

        return call

    relay.now, relay.pause, relay.Mailbox = real_monotonic, real_pause, Timed  # type: ignore[assignment]
    WebhookPool.send = timed(saved[3], 2)  # type: ignore[method-assign]
    WebhookPool.edit = timed(saved[4], 1)  # type: ignore[method-assign]
    try:
        async with fake_server(1 / tokens_per_second, words) as server:
            with tempfile.TemporaryDirectory() as folder:
                bot = create_bot(bot_settings(folder, server.base_url))
                async with simcord.run(bot, settle_timeout=600) as env:
                    guild = env.create_guild()
                    channel = guild.create_text_channel("general")
                    alice = guild.add_member(env.create_user("alice"))
                    await env.settle()
                    home = bot.get_channel(channel.id)
                    assert isinstance(home, discord.TextChannel)
                    started = []
                    for n in range(dialogues):
                        plan = spec(rounds, max_tokens=400)
                        plan = replace(plan, limits=replace(plan.limits, budget_usd=Decimal(5)))
                        dialogue = await bot.services.runner.create(plan)
                        thread = await home.create_thread(
                            name=f"bench {n}", type=discord.ChannelType.public_thread
                        )
                        room = Room(dialogue.id, guild.id, home.id, thread.id, alice.id)
                        await bot.relays.start(await bot.services.rooms.create(room))
                        started.append(dialogue.id)
                    for dialogue_id in started:
                        await bot.relays.wait(dialogue_id)
                    await env.settle()
                await bot.close()
    finally:
        relay.now, relay.pause, relay.Mailbox, WebhookPool.send, WebhookPool.edit = saved  # type: ignore[method-assign]
    latencies = _latencies(arrivals, shown)
    return {
        "dialogues in one channel": str(dialogues),
        "words timed": str(len(latencies)),
        "to Discord p50": f"{percentile(latencies, 50):.2f} s",
        "to Discord p99": f"{percentile(latencies, 99):.2f} s",
        "never shown": str(len(arrivals) - len(latencies)),
    }


def _latencies(arrivals: list[tuple[float, int, str]], shown: list[tuple[float, int, str]]) -> list[float]:
    """For each piece of text, the time until some message first showed the turn up to it."""
    found = []
    for arrived, _box, text in arrivals:
        when = next(
            (at for at, _thread, content in shown if at >= arrived and content.startswith(text)), None
        )
        if when is not None:
            found.append(when - arrived)
    return found
