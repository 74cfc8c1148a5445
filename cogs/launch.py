"""Opening a dialogue in Discord: the server's limits checked, its public thread made, its first
message posted and its relay started. `/voices start` and the scheduled shows both come here."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import discord

from bot.app import utc_now
from bot.guilds import GuildLoad, check_start
from bot.models import ContextPolicy, Dialogue, DialogueSpec, Limits, LoopAction, Persona
from bot.rooms import Room
from cogs.relay import Services

if TYPE_CHECKING:
    from cogs.client import VoicesBot
    from config import Settings


def discord_spec(
    settings: Settings,
    personas: Sequence[Persona],
    opening: str,
    rounds: int | None,
    budget: Decimal | None,
    origin: str,
    context: str | None = None,
    on_loop: str | None = None,
    referee: Persona | None = None,
) -> DialogueSpec:
    """Return a dialogue as the bot starts it: what was given, the deployment's defaults elsewhere."""
    limits = Limits(
        max_rounds=rounds or settings.default_rounds,
        budget_usd=budget if budget is not None else settings.default_budget,
        max_total_tokens=settings.max_total_tokens,
        max_seconds=settings.max_seconds,
    )
    return DialogueSpec(
        tuple(personas),
        opening,
        limits,
        origin=origin,
        context_policy=ContextPolicy(context or settings.context_policy),
        loop_action=LoopAction(on_loop or settings.loop_action),
        summary_model=settings.summary_model,
        referee=referee,
    )


async def check_guild(services: Services, guild_id: int, member_id: int, spec: DialogueSpec) -> None:
    """Raise InputError if the dialogue would break one of the server's limits or caps."""
    policy = await services.guilds.policy(guild_id)
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    load = GuildLoad(
        guild_today=await services.rooms.committed(guild_id, today),
        member_today=await services.rooms.committed(guild_id, today, member_id),
        active=await services.rooms.active_count(guild_id),
    )
    check_start(policy, spec, load)


async def launch(
    bot: VoicesBot, channel: discord.TextChannel, spec: DialogueSpec, starter_id: int, starter: str
) -> tuple[Dialogue, discord.Thread, Decimal]:
    """Check, open the thread, store the dialogue and start relaying it; return the dialogue, its
    thread and its first call's worst case. Nothing is stored if the thread cannot be made."""
    services = bot.services
    await check_guild(services, channel.guild.id, starter_id, spec)
    worst = await services.runner.check(spec)
    names = " ↔ ".join(p.name for p in spec.participants)
    thread = await channel.create_thread(
        name=names[:100],
        type=discord.ChannelType.public_thread,
        auto_archive_duration=1440,
        reason="a Voices dialogue",
    )
    dialogue = await services.runner.create(spec)
    room = await services.rooms.create(Room(dialogue.id, channel.guild.id, channel.id, thread.id, starter_id))
    # The relay begins the thread with the opening (and does again after a crash that came first).
    await bot.relays.start(room, starter=starter)
    return dialogue, thread, worst
