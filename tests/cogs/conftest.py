"""SimCord fixtures: the real bot from `cogs.create_bot`, a simulated Discord, the loopback OpenRouter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import simcord
from simcord.http.routes import interactions as webhook_routes

from cogs import create_bot
from cogs.client import TICK, VoicesBot
from config import Settings
from tests.conftest import API_KEY
from tests.fake_openrouter import FakeOpenRouter


class _InThread:
    """A webhook seen through a `thread_id` query: the same webhook, filing into the thread."""

    def __init__(self, webhook: Any, thread_id: int):
        self._webhook = webhook
        self.channel_id = thread_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._webhook, name)


@pytest.fixture(autouse=True)
def webhooks_post_into_threads(monkeypatch):
    """SimCord 3.2.1 ignores `thread_id` on webhook execute and edit, filing the message in the parent
    channel; Discord posts it into the thread. This makes SimCord do what Discord does, so tests can
    read a thread's history. (shared/reference/discord.md, "A SimCord gap to know about")."""
    original = webhook_routes._incoming_webhook

    def incoming(ctx: Any) -> Any:
        webhook = original(ctx)
        thread_id = ctx.params.get("thread_id")
        return _InThread(webhook, int(thread_id)) if thread_id else webhook

    monkeypatch.setattr(webhook_routes, "_incoming_webhook", incoming)


def make_settings(tmp_path: Path, server: FakeOpenRouter, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openrouter_api_key": API_KEY,
        "openrouter_base_url": server.base_url,
        "database": tmp_path / "voices.db",
        "discord_token": "not-a-real-token",
        "default_max_tokens": 300,
        "default_budget": "0.50",
        # SimCord has no gateway to ask how many shards to run; one, as a small bot gets.
        "shard_count": 1,
        # SimCord's clock moves only when a test moves it: a pace timed by it would read a stream
        # that streams in real time only when the test next moves the clock.
        "read_pace": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class World:
    """A simulated server with a channel, two members, and the bot."""

    env: simcord.Env
    bot: VoicesBot
    guild: Any
    channel: Any
    alice: Any
    bob: Any
    server: FakeOpenRouter

    async def tick(self, moment: datetime) -> None:
        """Move SimCord's clock on to a minute past `moment`: the bot's minute clock has ticked at
        least once at or after it (votes closed, shows put on)."""
        ahead = (moment - self.env.now()).total_seconds() + TICK
        if ahead > 0:
            await self.env.advance_time(ahead)
        await self.env.settle()

    def thread(self, index: int = -1) -> Any:
        return self.channel.threads[index]

    async def crash(self) -> None:
        """The bot's process goes away: its dialogues stop where they are. (SimCord's restart
        detaches the old bot but leaves its tasks running, which a dead process would not.) Their
        leases are given up as the tasks end; a lease left to lapse is tested on its own."""
        await self.bot.relays.close()

    async def finish(self, dialogue_id: int, bot: VoicesBot | None = None) -> None:
        """Let the dialogue's background relay (in `bot`, by default the world's) run to its end,
        moving SimCord's clock along for the edits that wait out their second (SimCord's time only
        moves when a test moves it)."""
        relays = (bot or self.bot).relays
        for _ in range(600):
            if not relays.is_running(dialogue_id):
                break
            await self.env.advance_time(1.0)
        await relays.wait(dialogue_id)
        await self.env.settle()


@pytest.fixture
async def simcord_bot(tmp_path, server, request) -> AsyncIterator[VoicesBot]:
    """The bot as `voices bot` builds it, pointed at the loopback OpenRouter and a tmp database
    (with the settings of a `@pytest.mark.settings(...)` marker, if the test has one).

    SimCord detaches the bot without closing it; closing it here releases the database and the
    HTTP client, as a real shutdown would."""
    marker = request.node.get_closest_marker("settings")
    bot = create_bot(make_settings(tmp_path, server, **(marker.kwargs if marker else {})))
    yield bot
    await bot.close()


@pytest.fixture
def world(simcord_env, simcord_bot, server, monkeypatch) -> World:
    env = simcord_env
    # A member's turn waits on the member: outside input, as far as SimCord's settling goes.
    monkeypatch.setattr(
        "cogs.relay.wait_for_member", lambda waiting: env.external_wait(waiting, reason="a member's turn")
    )

    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    bob = guild.add_member(env.create_user("bob"))
    return World(env, simcord_bot, guild, channel, alice, bob, server)
