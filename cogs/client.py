"""The bot: opens the engine's resources once, loads the cogs, syncs commands when they changed,
and resumes every dialogue a restart interrupted. As a worker (`voices worker`) it has no gateway
and no commands: it logs in to the REST API and runs the dialogues nobody runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Any

import discord
from discord.ext import commands, tasks

from bot.app import open_app, utc_now
from bot.catalogue import Catalogue
from bot.guilds import GuildStore
from bot.metrics import Metrics
from bot.models import Persona
from bot.personas import load_personas
from bot.privacy import delete_older
from bot.rooms import RoomStore
from bot.schedules import ScheduleStore
from bot.text import counted
from bot.votes import VoteStore
from cogs import EXTENSIONS
from cogs.health import Health, RateLimitCounter
from cogs.people import InterjectButton, SayButton
from cogs.polls import Polls
from cogs.relay import Relays, Services
from cogs.schedules import Shows
from cogs.status import ControlButton
from cogs.webhooks import WebhookPool
from config import DISCORD_READ_PACE, Settings

log = logging.getLogger(__name__)
#: Retention runs at start-up, then once a day.
RETENTION_INTERVAL = 24 * 3600
#: Votes close, and scheduled dialogues start, on a minute's tick.
TICK = 60


class VoicesBot(commands.AutoShardedBot):
    """Discord client for Voices. Default intents only: it never reads members' messages.

    Sharded as Discord requires past 2,500 servers: one process runs every shard unless the
    settings name its share (VOICES_SHARD_COUNT, VOICES_SHARDS), so several processes can split the
    gateway. With VOICES_GATEWAY_ONLY, it leaves its dialogues to workers: this class with `worker`
    set, which never connects to the gateway (personas post through webhooks and the REST API)."""

    services: Services
    relays: Relays
    catalogue: Catalogue
    personas: dict[str, Persona]
    polls: Polls
    shows: Shows

    def __init__(self, settings: Settings, worker: bool = False):
        # Left out when unset: discord.py then runs every shard (its stub types no None here).
        shards: dict[str, Any] = {} if settings.shards is None else {"shard_ids": list(settings.shards)}
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            shard_count=settings.shard_count,
            **shards,
        )
        self.settings = settings
        self.worker = worker
        self._claiming: asyncio.Task[None] | None = None
        self._resources = AsyncExitStack()
        self._closing = False

    async def setup_hook(self) -> None:
        config = self.settings.engine_config(DISCORD_READ_PACE)
        app = await self._resources.enter_async_context(open_app(config))
        self.catalogue = app.catalogue
        self.personas = load_personas(self.settings.personas_file)
        metrics = Metrics()
        self.services = Services(
            store=app.store,
            runner=app.runner,
            rooms=RoomStore(app.store),
            guilds=GuildStore(app.store, self.settings.guild_defaults()),
            webhooks=WebhookPool(self, metrics),
            votes=VoteStore(app.store),
            metrics=metrics,
        )
        self.polls = Polls(self, self.services)
        self.shows = Shows(self, ScheduleStore(app.store))
        self.services.on_end.append(self.polls.open)
        self.relays = Relays(self, self.services, hand_over=self.settings.gateway_only and not self.worker)
        self._count_requests(metrics)
        counter = RateLimitCounter(metrics)
        logging.getLogger("discord").addHandler(counter)
        self._resources.callback(logging.getLogger("discord").removeHandler, counter)
        if self.settings.metrics_port is not None:
            health = Health(metrics, app.store, self._connected, self.relays.running, self.worker)
            await health.start(self.settings.metrics_host, self.settings.metrics_port)
            self._resources.push_async_callback(health.stop)
        if self.worker:  # no commands, buttons or minute clock: the gateway has them
            self._claiming = self.loop.create_task(
                self.relays.claim_forever(self.settings.worker_dialogues), name="voices-claims"
            )
            return
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(ControlButton, SayButton, InterjectButton)
        await self.sync_commands()
        if self.settings.gateway_only:
            # Said once at start: with no worker on this database, dialogues open and wait.
            log.warning(
                "gateway only: every dialogue is left for `voices worker` processes on %s; none runs here",
                app.store.address,
            )
        self.loop.create_task(self._resume_when_ready(), name="voices-resume")
        self.clock.start()
        if self.settings.retain_days is not None:
            self.retention.start(self.settings.retain_days)

    def _count_requests(self, metrics: Metrics) -> None:
        """Count the bot's own REST requests (webhooks count theirs in WebhookPool): discord.py
        offers no hook, so its one entry point is wrapped."""
        request = self.http.request

        async def counted(route: Any, **options: Any) -> Any:
            metrics.discord_requests.labels("bot").inc()
            try:
                return await request(route, **options)
            except discord.HTTPException as exc:
                if exc.status == 429:  # past discord.py's own retries, which its log reports
                    metrics.discord_rate_limited.inc()
                raise

        self.http.request = counted  # type: ignore[method-assign]

    @tasks.loop(seconds=TICK)
    async def clock(self) -> None:
        """Close the audience votes whose time is up and put on the shows whose slot has come; the
        first tick, at start-up, catches up on what fell due while the bot was down. Discord's
        clock, which a harness with virtual time (SimCord) moves."""
        try:
            await self.tick(discord.utils.utcnow())
        except Exception:  # one bad minute must not stop the clock
            log.exception("the minute's work failed")

    @clock.before_loop
    async def _before_clock(self) -> None:
        await self.wait_until_ready()

    async def tick(self, now: datetime) -> None:
        """Do what is due at `now`: close votes, put on scheduled shows."""
        await self.polls.close_due(now)
        await self.shows.run_due(now)

    @tasks.loop(seconds=RETENTION_INTERVAL)
    async def retention(self, days: int) -> None:
        """Apply VOICES_RETAIN_DAYS at start-up, then once a day: a loop like the minute clock's."""
        try:
            await self.retain(days)
        except Exception:  # a busy database today is no reason to stop retaining tomorrow
            log.exception("retention failed; trying again tomorrow")

    async def retain(self, days: int) -> list[int]:
        """Delete the dialogues that ended more than `days` days ago, saying in the log which."""
        cutoff = utc_now() - timedelta(days=days)
        removed = await delete_older(self.services.store, cutoff)
        if removed:
            log.warning(
                "retention (VOICES_RETAIN_DAYS=%d): deleted %s that ended before %s: %s",
                days,
                counted(len(removed), "dialogue"),
                cutoff.strftime("%Y-%m-%d %H:%M UTC"),
                ", ".join(map(str, removed)),
            )
        return removed

    def _connected(self) -> bool:
        if self.worker:  # logged in to the REST API, which is all a worker uses
            return self.user is not None and not self.is_closed()
        return self.is_ready() and not self.is_closed()

    async def work(self, token: str) -> None:
        """Run as a worker until closed: log in to the REST API (setup_hook then starts looking
        for dialogues a gateway left or a stopped process had, up to VOICES_WORKER_DIALOGUES at a
        time), and never connect to the gateway."""
        await self.login(token)
        log.info("worker %s: running dialogues nobody runs", self.services.store.owner)
        assert self._claiming is not None  # setup_hook started it, during login
        await asyncio.wait({self._claiming})

    async def _resume_when_ready(self) -> None:
        await self.wait_until_ready()
        await self.relays.resume_all()

    async def sync_commands(self) -> bool:
        """Sync the command tree if it changed since the last sync; return whether it synced.

        Global commands have a daily creation limit, so an unchanged tree is never sent again.
        """
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        key = f"commands:{guild.id if guild else 'global'}"
        if await self.services.store.get_state(key) == digest:
            return False
        await self.tree.sync(guild=guild)
        await self.services.store.set_state(key, digest)
        log.info("synced %d commands to %s", len(payload), "guild" if guild else "all servers")
        return True

    async def close(self) -> None:
        """Stop relaying (dialogues stay `running`, to resume next start), then close everything.

        Safe to call more than once, and from two tasks at once (a signal and a harness, say).
        """
        if self._closing:
            return
        self._closing = True
        self.clock.cancel()
        self.retention.cancel()
        if self._claiming is not None:
            self._claiming.cancel()
        if hasattr(self, "relays"):
            await self.relays.close()
        await super().close()
        await self._resources.aclose()
