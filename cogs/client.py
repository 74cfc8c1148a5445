"""The bot: opens the engine's resources once, loads the cogs, syncs commands when they changed,
and resumes every dialogue a restart interrupted."""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import AsyncExitStack

import discord
from discord.ext import commands

from bot.app import open_app
from bot.catalogue import Catalogue
from bot.guilds import GuildStore
from bot.metrics import Metrics
from bot.models import Persona
from bot.personas import load_personas
from bot.rooms import RoomStore
from cogs import EXTENSIONS
from cogs.health import Health, RateLimitCounter
from cogs.people import InterjectButton, SayButton
from cogs.relay import Relays, Services
from cogs.status import ControlButton
from cogs.webhooks import WebhookPool
from config import Settings

log = logging.getLogger(__name__)


class VoicesBot(commands.Bot):
    """Discord client for Voices. Default intents only: it never reads members' messages."""

    services: Services
    relays: Relays
    catalogue: Catalogue
    personas: dict[str, Persona]

    def __init__(self, settings: Settings):
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
        )
        self.settings = settings
        self._resources = AsyncExitStack()
        self._closing = False

    async def setup_hook(self) -> None:
        app = await self._resources.enter_async_context(open_app(self.settings.engine_config()))
        self.catalogue = app.catalogue
        self.personas = load_personas(self.settings.personas_file)
        metrics = Metrics()
        self.services = Services(
            store=app.store,
            runner=app.runner,
            rooms=RoomStore(app.store),
            guilds=GuildStore(app.store, self.settings.guild_defaults()),
            webhooks=WebhookPool(self, metrics),
            metrics=metrics,
        )
        self.relays = Relays(self, self.services)
        counter = RateLimitCounter(metrics)
        logging.getLogger("discord").addHandler(counter)
        self._resources.callback(logging.getLogger("discord").removeHandler, counter)
        if self.settings.metrics_port is not None:
            health = Health(metrics, app.store, self._connected, self.relays.running)
            await health.start(self.settings.metrics_host, self.settings.metrics_port)
            self._resources.push_async_callback(health.stop)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(ControlButton, SayButton, InterjectButton)
        await self.sync_commands()
        self.loop.create_task(self._resume_when_ready(), name="voices-resume")

    def _connected(self) -> bool:
        return self.is_ready() and not self.is_closed()

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
        if hasattr(self, "relays"):
            await self.relays.close()
        await super().close()
        await self._resources.aclose()
