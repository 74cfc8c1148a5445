"""Scheduled shows in Discord: a schedule's dialogue built and opened in its channel when its slot
comes, counted against the server's caps like any other; a schedule whose channel or voices are gone
disables itself and says so."""

from __future__ import annotations

import logging
from datetime import datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING

import discord

from bot.deadlines import Deadlines
from bot.errors import InputError, VoicesError
from bot.guilds import GuildLoad, check_start
from bot.models import DialogueSpec
from bot.personas import resolve_participants, resolve_persona
from bot.schedules import GRACE, Cadence, Schedule, ScheduleStore
from cogs.errors import user_message
from cogs.launch import discord_spec, launch
from cogs.webhooks import NO_MENTIONS

if TYPE_CHECKING:
    from cogs.client import VoicesBot

log = logging.getLogger(__name__)


def show_spec(
    bot: VoicesBot, voices: tuple[str, ...], opening: str, rounds: int, budget: Decimal, referee: str | None
) -> DialogueSpec:
    """Return the dialogue a schedule puts on, from the persona library as it is now; InputError
    names a voice that is gone."""
    settings = bot.settings
    if any(ref.strip().lower() in ("me", "human") for ref in voices):
        raise InputError("a scheduled show has no seat for a member; give personas or model ids")
    personas = resolve_participants(
        [(ref, None) for ref in voices], bot.personas, settings.default_max_tokens
    )
    judge = resolve_persona(referee, bot.personas, settings.default_max_tokens) if referee else None
    return discord_spec(settings, personas, opening, rounds, budget, "schedule", referee=judge)


class Shows:
    """Put on every show whose slot has come."""

    def __init__(self, bot: VoicesBot, schedules: ScheduleStore):
        self._bot = bot
        self.schedules = schedules
        self._deadlines = Deadlines(schedules.earliest)

    async def add(
        self,
        guild_id: int,
        channel_id: int,
        member_id: int,
        spec: DialogueSpec,
        voices: tuple[str, ...],
        referee: str | None,
        cadence: Cadence,
        at: time,
        weekday: int | None,
    ) -> Schedule:
        """Keep a show whose own limits hold now (the day's caps are checked on the day)."""
        policy = await self._bot.services.guilds.policy(guild_id)
        check_start(policy, spec, GuildLoad(Decimal(0), Decimal(0), 0))
        await self._bot.services.runner.check(spec)
        limits = spec.limits
        added = await self.schedules.add(
            guild_id,
            channel_id,
            member_id,
            voices,
            spec.opening,
            limits.max_rounds,
            limits.budget_usd,
            cadence,
            at,
            weekday,
            referee,
            discord.utils.utcnow(),
        )
        self._deadlines.added(added.next_run_at)
        return added

    async def run_due(self, now: datetime) -> list[int]:
        """Start the dialogue of each schedule that is due; return the dialogues started."""
        started: list[int] = []
        if not await self._deadlines.due(now):
            return started
        self._deadlines.forget()
        for schedule in await self.schedules.due(now):
            if not await self.schedules.claim(schedule, now):
                continue  # another process, or an earlier tick, has it
            late = now - schedule.next_run_at
            if late > GRACE:
                log.warning(
                    "schedule %s: its slot at %s was missed by %s (the bot was down); skipped, as "
                    "slots missed by more than %s are",
                    schedule.id,
                    schedule.next_run_at.strftime("%Y-%m-%d %H:%M UTC"),
                    late,
                    GRACE,
                )
                continue
            dialogue_id = await self._put_on(schedule)
            if dialogue_id is not None:
                await self.schedules.ran(schedule.id, dialogue_id, now)
                started.append(dialogue_id)
        return started

    async def _put_on(self, schedule: Schedule) -> int | None:
        channel = await self._channel(schedule)
        if channel is None:
            await self._disable(schedule, None, "its channel is gone, or the bot can no longer see it")
            return None
        try:
            spec = show_spec(
                self._bot,
                schedule.voices,
                schedule.opening,
                schedule.rounds,
                schedule.budget_usd,
                schedule.referee,
            )
            await self._bot.services.runner.check(spec)
        except InputError as exc:  # a persona or model that is no more: this show cannot go on
            await self._disable(schedule, channel, user_message(exc))
            return None
        except VoicesError as exc:  # the catalogue could not be read just now: only this slot is lost
            await self._say(
                channel, f"Scheduled show {schedule.id} did not start this time: {user_message(exc)}"
            )
            return None
        starter = f"Schedule {schedule.id} ({schedule.describe()}, set by <@{schedule.created_by}>)"
        try:
            dialogue, _, _ = await launch(self._bot, channel, spec, schedule.created_by, starter)
        except InputError as exc:  # the server's caps or its limit on dialogues at once: not today
            await self._say(
                channel, f"Scheduled show {schedule.id} did not start this time: {user_message(exc)}"
            )
            return None
        except discord.NotFound:  # deleted since the bot last heard of it
            await self._disable(schedule, None, "its channel is gone, or the bot can no longer see it")
            return None
        except discord.HTTPException as exc:
            await self._say(
                channel, f"Scheduled show {schedule.id} did not start: Discord said {exc.text or exc}"
            )
            return None
        return dialogue.id

    async def _channel(self, schedule: Schedule) -> discord.TextChannel | None:
        channel = self._bot.get_channel(schedule.channel_id)
        if channel is None:
            try:
                channel = await self._bot.fetch_channel(schedule.channel_id)
            except (discord.NotFound, discord.Forbidden):
                return None
        return channel if isinstance(channel, discord.TextChannel) else None

    async def _disable(self, schedule: Schedule, channel: discord.TextChannel | None, why: str) -> None:
        await self.schedules.disable(schedule.id, why)
        log.warning("schedule %s disabled: %s", schedule.id, why)
        if channel is not None:
            await self._say(
                channel,
                f"Scheduled show {schedule.id} is disabled: {why}. `/voices schedule remove {schedule.id}`, "
                "then add it again as it should be.",
            )

    @staticmethod
    async def _say(channel: discord.TextChannel, text: str) -> None:
        try:
            await channel.send(text[:2000], allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:  # the log keeps it all the same
            log.warning("could not post in channel %s: %s", channel.id, exc)
