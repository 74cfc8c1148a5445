"""The Discord adapter: `/voices` commands, threads, webhooks. Thin: every rule lives in `bot/`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cogs.client import VoicesBot
    from config import Settings

# Loaded in this order by VoicesBot.setup_hook, explicitly, like RoboDanny's initial_extensions.
EXTENSIONS: tuple[str, ...] = ("cogs.errors", "cogs.voices")


def create_bot(settings: Settings, worker: bool = False) -> VoicesBot:
    """Build the whole bot (store, HTTP client, providers, cogs load in setup_hook) without
    connecting; as a `worker`, the part that runs dialogues and needs no gateway."""
    from cogs.client import VoicesBot

    return VoicesBot(settings, worker)
