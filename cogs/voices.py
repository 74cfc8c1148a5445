"""The `/voices` command group: start; stop, pause, resume, extend; status, list, transcript, personas;
config. Each command turns options into engine calls and shows the result."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import usage as spend
from bot.app import utc_now
from bot.budget import format_usd, parse_usd
from bot.errors import InputError, StateError
from bot.lineage import continue_dialogue, fork
from bot.models import (
    MAX_SEED,
    Ask,
    Dialogue,
    DialogueSpec,
    Limits,
    LineageKind,
    Persona,
    Status,
    StopReason,
)
from bot.personas import resolve_participants, resolve_persona
from bot.privacy import forget_member
from bot.rooms import Room
from bot.schedules import Cadence, Schedule, parse_clock, parse_weekday
from bot.text import counted
from bot.votes import DEFAULT_QUESTION, MAX_HOURS, check_question
from cogs.errors import reply, user_message
from cogs.files import transcript_files
from cogs.launch import check_guild, discord_spec, launch
from cogs.people import ME, seat_of
from cogs.schedules import show_spec
from cogs.status import prompts_embed, status_embed
from cogs.usage import PER, usage_since, usage_text
from cogs.webhooks import NO_MENTIONS

if TYPE_CHECKING:
    from cogs.client import VoicesBot

# What the bot needs in the channel where /voices start is used.
NEEDED = dict(
    view_channel=True,
    send_messages=True,
    create_public_threads=True,
    send_messages_in_threads=True,
    manage_webhooks=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)
Action = Literal["stop", "pause", "resume"]
log = logging.getLogger(__name__)


def permissions_there(interaction: discord.Interaction, room: Room) -> discord.Permissions | None:
    """The member's permissions in the dialogue's channel, not the one the command was typed in;
    None when that channel is gone (or the member is not one of the server's)."""
    guild, member = interaction.guild, interaction.user
    channel = guild.get_channel(room.channel_id) if guild is not None else None
    if channel is None or not isinstance(member, discord.Member):
        return None
    return channel.permissions_for(member)


def may_see(interaction: discord.Interaction, room: Room) -> bool:
    """Whether the member may read the dialogue's thread. Named by its id from another channel, a
    private channel's dialogue would show them (and, posted, everyone there) what it hides."""
    member = interaction.user
    allowed = permissions_there(interaction, room)
    if allowed is not None:
        return allowed.view_channel and allowed.read_message_history
    if interaction.guild is None or not isinstance(member, discord.Member):
        return False
    # Its channel deleted, with whatever it hid: its starter's, and the server managers'.
    return member.id == room.starter_id or member.guild_permissions.manage_guild


@app_commands.guild_only()
class VoicesCog(commands.GroupCog, group_name="voices", group_description="Let AI models talk to each other"):
    """Slash commands that hand everything to the engine and show the result."""

    def __init__(self, bot: VoicesBot):
        self.bot = bot
        self.s = bot.services
        # When each member last interjected (loop time), for the per-member rate limit.
        self._interjected: dict[int, float] = {}

    # Autocomplete ----------------------------------------------------------------------------

    async def speaker_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Offer personas first, then catalogue models, matching what was typed."""
        needle = current.lower()
        names = [ME] if needle in ME else []
        names += [k for k in self.bot.personas if needle in k.lower()]
        try:
            models = [m.id for m in await self.bot.catalogue.search(current)]
        except Exception:  # noqa: BLE001 - a catalogue outage must not break typing
            models = []
        # Discord refuses the whole list if one value is over 100 characters (another server's
        # catalogue may hold such an id); that one can still be typed.
        offers = [v for v in names + models if len(v) <= 100][:25]
        return [app_commands.Choice(name=v, value=v) for v in offers]

    # Start -----------------------------------------------------------------------------------

    @app_commands.command(name="start")
    @app_commands.describe(
        a="Who speaks first: a persona (see /voices personas), a model id like z-ai/glm-5, or 'me'",
        b="Who answers: a persona, a model id, or 'me' to take the seat yourself",
        c="A third voice (optional): a persona, a model id, or 'me'",
        d="A fourth voice (optional): a persona, a model id, or 'me'",
        opening="The first message, given to the first speaker",
        rounds="Rounds: each speaker talks once per round",
        budget="Hard cap in USD, e.g. 0.25: no call is made that could pass it",
        system_a="System prompt for the first speaker (replaces the persona's)",
        system_b="System prompt for the second speaker (replaces the persona's)",
        system_c="System prompt for the third speaker",
        system_d="System prompt for the fourth speaker",
        context="When the history outgrows a model's context: stop, truncate, or compact into a summary",
        on_loop="When the dialogue goes in circles: notify in the thread, pause, or stop",
        seed="Repeat an earlier dialogue's sampling (its transcript's seed); drawn at random if left out",
        referee="A persona or model that takes no turns but gives a verdict at the end, from the budget",
        referee_every="Also a verdict after every N rounds (needs referee)",
    )
    @app_commands.autocomplete(
        a=speaker_choices, b=speaker_choices, c=speaker_choices, d=speaker_choices, referee=speaker_choices
    )
    @app_commands.checks.bot_has_permissions(**NEEDED)
    async def start(
        self,
        interaction: discord.Interaction,
        a: app_commands.Range[str, 1, 200],
        b: app_commands.Range[str, 1, 200],
        opening: app_commands.Range[str, 1, 4000],
        rounds: app_commands.Range[int, 1, 100] | None = None,
        budget: app_commands.Range[str, 1, 20] | None = None,
        system_a: app_commands.Range[str, 1, 4000] | None = None,
        system_b: app_commands.Range[str, 1, 4000] | None = None,
        context: Literal["stop", "truncate", "compact"] | None = None,
        on_loop: Literal["notify", "pause", "stop"] | None = None,
        c: app_commands.Range[str, 1, 200] | None = None,
        d: app_commands.Range[str, 1, 200] | None = None,
        system_c: app_commands.Range[str, 1, 4000] | None = None,
        system_d: app_commands.Range[str, 1, 4000] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        referee: app_commands.Range[str, 1, 200] | None = None,
        referee_every: app_commands.Range[int, 1, 100] | None = None,
    ) -> None:
        """Start a dialogue between two to four voices (models, or you) in a new public thread."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            raise InputError("use /voices start in a text channel; it opens a thread of its own")
        seats = [(a, system_a), (b, system_b), (c, system_c), (d, system_d)]
        if c is None and d is not None:
            raise InputError("give c before d: voices speak in the order a, b, c, d")
        spec = self._spec(
            interaction,
            [(r, sp) for r, sp in seats if r is not None],
            opening,
            rounds,
            budget,
            context,
            on_loop,
        )
        judge = None
        if referee is not None:
            if referee.strip().lower() == ME:
                raise InputError("the referee must be a persona or a model; you can read along and interject")
            judge = resolve_persona(referee, self.bot.personas, self.bot.settings.default_max_tokens)
        spec = replace(spec, seed=seed, referee=judge, referee_every=referee_every)
        dialogue, thread, worst = await launch(
            self.bot, channel, spec, interaction.user.id, interaction.user.mention
        )
        await interaction.followup.send(
            f"Started dialogue {dialogue.id} in {thread.mention}: "
            f"{counted(spec.limits.max_rounds, 'round')}, budget {format_usd(spec.limits.budget_usd)} "
            f"(each call reserves its worst case; the first at most {format_usd(worst)}).",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    def _spec(
        self,
        interaction: discord.Interaction,
        seats: list[tuple[str, str | None]],
        opening: str,
        rounds: int | None,
        budget: str | None,
        context: str | None,
        on_loop: str | None,
    ) -> DialogueSpec:
        settings = self.bot.settings
        me = seat_of(interaction.user)
        personas = resolve_participants(
            seats,
            self.bot.personas,
            settings.default_max_tokens,
            person=lambda ref: me if ref.lower() == ME else None,
        )
        spend = parse_usd(budget) if budget else None
        return discord_spec(settings, personas, opening, rounds, spend, "discord", context, on_loop)

    # Control ---------------------------------------------------------------------------------

    async def _room(self, interaction: discord.Interaction, dialogue: int | None) -> Room:
        """Return the room named by id, or the one of the thread the command was used in."""
        if dialogue is not None:
            room = await self.s.rooms.get(dialogue)
        else:
            found = await self.s.rooms.in_thread(interaction.channel_id or 0)
            if found is None:
                raise InputError("use this in a dialogue's thread, or give the dialogue's id")
            room = found
        if room.guild_id != interaction.guild_id or not may_see(interaction, room):
            # The same words either way: a refusal must not tell who cannot see it that it exists.
            raise InputError(f"no dialogue {room.dialogue_id} in this server; `/voices list` shows them")
        return room

    def _may_control(self, interaction: discord.Interaction, room: Room) -> None:
        # Manage Threads where the dialogue is, not where the command was typed: a moderator of
        # one channel is not one of every channel whose dialogue they can name.
        perms = permissions_there(interaction, room) or interaction.permissions
        if interaction.user.id != room.starter_id and not perms.manage_threads:
            raise InputError(
                "only whoever started this dialogue, or members who can manage threads, may do that"
            )

    async def control(
        self, interaction: discord.Interaction, action: Action, dialogue_id: int | None, now: bool = True
    ) -> None:
        """Stop, pause or resume a dialogue (from a command or a button); refusals are ephemeral.

        A stop cuts the reply in flight at once unless `now` is False; then the turn finishes first
        (and is paid for in full, as it would be anyway by the providers that cannot cancel).
        """
        try:
            room = await self._room(interaction, dialogue_id)
            self._may_control(interaction, room)
            text = await self._apply(action, room, now)
        except (InputError, StateError) as exc:
            await reply(interaction, f"⚠ {user_message(exc)}")
            return
        await reply(interaction, text)

    async def _apply(self, action: Action, room: Room, now: bool) -> str:
        dialogue = await self.s.store.get_dialogue(room.dialogue_id)
        relays = self.bot.relays
        running = relays.is_running(room.dialogue_id)
        if dialogue.status.is_final:
            raise StateError(f"dialogue {dialogue.id} has already ended ({dialogue.stop_reason})")
        if action in ("stop", "pause") and not running:
            # Another process may run it (a shard, or one that took it over): the ask waits in
            # the database for that process, which takes it within a second.
            asked = Ask.of(action, now)
            if await self.s.store.ask(dialogue.id, asked):
                return f"Asked the process running dialogue {dialogue.id} to {action} {asked.when}."
        if action == "stop":
            if running:
                relays.control(room.dialogue_id).stop(now=now)
            else:
                await relays.start(room, stop=True)
            return f"Stopping dialogue {dialogue.id}" + (
                "." if now or not running else " after the turn in flight."
            )
        if action == "pause":
            if not running:
                raise StateError(f"dialogue {dialogue.id} is not running")
            relays.control(room.dialogue_id).pause()
            return f"Dialogue {dialogue.id} pauses after the turn in flight."
        if running:
            raise StateError(f"dialogue {dialogue.id} is already running")
        await relays.start(room)
        return f"Resuming dialogue {dialogue.id}."

    @app_commands.command(name="stop")
    @app_commands.describe(
        dialogue="The dialogue's id (default: the one of this thread)",
        after_turn="Let the reply in flight finish first (default: cut it off now)",
    )
    async def stop(
        self, interaction: discord.Interaction, dialogue: int | None = None, after_turn: bool = False
    ) -> None:
        """Stop a dialogue; its transcript is still posted."""
        await self.control(interaction, "stop", dialogue, now=not after_turn)

    @app_commands.command(name="pause")
    @app_commands.describe(dialogue="The dialogue's id (default: the one of this thread)")
    async def pause(self, interaction: discord.Interaction, dialogue: int | None = None) -> None:
        """Pause a dialogue after the turn in flight."""
        await self.control(interaction, "pause", dialogue)

    @app_commands.command(name="resume")
    @app_commands.describe(dialogue="The dialogue's id (default: the one of this thread)")
    async def resume(self, interaction: discord.Interaction, dialogue: int | None = None) -> None:
        """Resume a paused dialogue."""
        await self.control(interaction, "resume", dialogue)

    @app_commands.command(name="extend")
    @app_commands.describe(
        rounds="Rounds to add", dialogue="The dialogue's id (default: the one of this thread)"
    )
    async def extend(
        self,
        interaction: discord.Interaction,
        rounds: app_commands.Range[int, 1, 100],
        dialogue: int | None = None,
    ) -> None:
        """Add rounds to a dialogue (one that ran out of rounds carries on)."""
        room = await self._room(interaction, dialogue)
        self._may_control(interaction, room)
        current = await self.s.store.get_dialogue(room.dialogue_id)
        policy = await self.s.guilds.policy(room.guild_id)
        if current.limits.max_rounds + rounds > policy.max_rounds:
            raise InputError(f"this server allows at most {counted(policy.max_rounds, 'round')} per dialogue")
        extended = await self.s.runner.extend(room.dialogue_id, rounds)
        if extended.status is Status.PAUSED and current.status.is_final:
            await self.bot.relays.start(room)
        await reply(
            interaction, f"Dialogue {extended.id} now has {counted(extended.limits.max_rounds, 'round')}."
        )

    # People --------------------------------------------------------------------------------

    async def seat_to_speak(
        self, interaction: discord.Interaction, dialogue_id: int | None
    ) -> tuple[Room, Persona]:
        """Return the room and the member's seat if it speaks next in this dialogue; refuse anyone else."""
        room = await self._room(interaction, dialogue_id)
        dialogue = await self.s.store.get_dialogue(room.dialogue_id)
        if dialogue.status.is_final:
            raise StateError(f"dialogue {dialogue.id} has ended ({dialogue.stop_reason})")
        mine = [p for p in dialogue.participants if p.human_id == str(interaction.user.id)]
        if not mine:
            raise InputError(f"you have no seat in dialogue {dialogue.id}; `/voices interject` adds a note")
        turns = await self.s.store.list_turns(dialogue.id)
        persona = dialogue.participants[len(turns) % len(dialogue.participants)]
        if persona not in mine or self.bot.relays.is_speaking(dialogue.id):
            raise InputError(f"it is not your turn yet: {persona.name} speaks next")
        return room, persona

    async def say(self, interaction: discord.Interaction, dialogue_id: int | None, text: str) -> None:
        """Give a member's words for their turn: to the running dialogue, or resuming a paused one."""
        if not text.strip():
            raise InputError("your words are empty; say something")
        room, _persona = await self.seat_to_speak(interaction, dialogue_id)
        relays = self.bot.relays
        if relays.is_running(room.dialogue_id):
            relays.control(room.dialogue_id).say(text)
            await reply(interaction, "Sent: your words are posted in the thread as your turn.")
        elif await self.s.store.ask(room.dialogue_id, Ask.SAY, text):
            # Another process runs the dialogue: it takes the words within a second.
            await reply(interaction, "Sent: your words are posted in the thread as your turn.")
        else:
            await relays.start(room, said=text)
            await reply(interaction, "Sent: your words are posted as your turn, and the dialogue goes on.")

    @app_commands.command(name="say")
    @app_commands.describe(
        text="What you say in your turn", dialogue="The dialogue's id (default: the one of this thread)"
    )
    async def say_command(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, 4000],
        dialogue: int | None = None,
    ) -> None:
        """Speak in your seat when it is your turn (the Your turn button does the same)."""
        await self.say(interaction, dialogue, text)

    async def may_interject(self, interaction: discord.Interaction, dialogue_id: int | None) -> Room:
        """Return the room if this member may interject now; refuse with the reason otherwise."""
        room = await self._room(interaction, dialogue_id)
        dialogue = await self.s.store.get_dialogue(room.dialogue_id)
        if dialogue.status.is_final:
            raise StateError(f"dialogue {dialogue.id} has ended; its models no longer read notes")
        policy = await self.s.guilds.policy(room.guild_id)
        roles = {r.id for r in getattr(interaction.user, "roles", ())}
        if interaction.user.id != room.starter_id and policy.interject_role not in roles:
            who = f", or members with the <@&{policy.interject_role}> role," if policy.interject_role else ""
            raise InputError(
                f"only whoever started this dialogue{who} may interject; "
                "a server manager can choose a role with /voices config interject_role"
            )
        last = self._interjected.get(interaction.user.id)
        wait = self.bot.settings.interject_cooldown
        now = asyncio.get_running_loop().time()
        if last is not None and now - last < wait:
            raise InputError(f"you can interject again in {wait - (now - last):.0f} s")
        return room

    async def interject(self, interaction: discord.Interaction, dialogue_id: int | None, text: str) -> None:
        """Add a member's note to the dialogue at the next turn boundary."""
        room = await self.may_interject(interaction, dialogue_id)
        limit = self.bot.settings.interject_max_chars
        if len(text) > limit:
            raise InputError(f"an interjection is at most {limit} characters; yours has {len(text)}")
        note = await self.s.runner.interject(
            room.dialogue_id, interaction.user.display_name, text, str(interaction.user.id)
        )
        self._interjected[interaction.user.id] = asyncio.get_running_loop().time()
        when = "" if self.bot.relays.is_running(room.dialogue_id) else ", when the dialogue goes on"
        # The thread shows it in its place, at that boundary.
        await reply(interaction, f"Noted: every model reads it before turn {note.before_seq + 1}{when}.")

    @app_commands.command(name="interject")
    @app_commands.describe(
        text="A short note every model reads at the next turn boundary",
        dialogue="The dialogue's id (default: the one of this thread)",
    )
    async def interject_command(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, 4000],
        dialogue: int | None = None,
    ) -> None:
        """Add a note to a dialogue (its starter, and members with the server's interject role)."""
        await self.interject(interaction, dialogue, text)

    # Continuations and forks -----------------------------------------------------------------

    @app_commands.command(name="continue")
    @app_commands.describe(
        dialogue="The finished dialogue to carry on",
        rounds="Rounds to play",
        budget="Hard cap in USD; a summary of the earlier dialogue, if needed, is paid from it",
        opening="The new first message (used when the earlier dialogue is remembered in summary)",
    )
    @app_commands.checks.bot_has_permissions(**NEEDED)
    async def continue_command(
        self,
        interaction: discord.Interaction,
        dialogue: int,
        rounds: app_commands.Range[int, 1, 100] | None = None,
        budget: app_commands.Range[str, 1, 20] | None = None,
        opening: app_commands.Range[str, 1, 4000] | None = None,
    ) -> None:
        """Start a new dialogue, in a new thread, that remembers a finished one."""
        await self._branch(interaction, dialogue, None, rounds, budget, opening)

    @app_commands.command(name="fork")
    @app_commands.describe(
        dialogue="The dialogue to fork",
        turn="The last turn to keep (1 is the first)",
        rounds="Rounds to play from there",
        budget="Hard cap in USD",
    )
    @app_commands.checks.bot_has_permissions(**NEEDED)
    async def fork_command(
        self,
        interaction: discord.Interaction,
        dialogue: int,
        turn: app_commands.Range[int, 1, 10000],
        rounds: app_commands.Range[int, 1, 100] | None = None,
        budget: app_commands.Range[str, 1, 20] | None = None,
    ) -> None:
        """Start a new dialogue, in a new thread, from any turn of an earlier one."""
        await self._branch(interaction, dialogue, turn, rounds, budget, None)

    async def _branch(
        self,
        interaction: discord.Interaction,
        dialogue_id: int,
        turn: int | None,
        rounds: int | None,
        budget: str | None,
        opening: str | None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            channel = channel.parent  # used in the earlier dialogue's thread: open the new one beside it
        if not isinstance(channel, discord.TextChannel):
            raise InputError("use this in a text channel or a dialogue's thread")
        parent_room = await self._room(interaction, dialogue_id)
        parent = await self.s.store.get_dialogue(parent_room.dialogue_id)
        settings = self.bot.settings
        limits = Limits(
            rounds or settings.default_rounds, parse_usd(budget) if budget else settings.default_budget
        )
        assert interaction.guild_id is not None
        spec = DialogueSpec(parent.participants, parent.opening, limits)
        await check_guild(self.s, interaction.guild_id, interaction.user.id, spec)
        runner = self.s.runner
        if turn is None:
            child = await continue_dialogue(
                runner,
                parent.id,
                limits.max_rounds,
                limits.budget_usd,
                "discord",
                opening,
                settings.summary_model,
            )
        else:
            child = await fork(runner, parent.id, turn, limits.max_rounds, limits.budget_usd, "discord")
        names = " ↔ ".join(p.name for p in child.participants)
        how = "fork" if turn is not None else "continued"
        try:
            thread = await channel.create_thread(
                name=f"{names} ({how})"[:100],
                type=discord.ChannelType.public_thread,
                auto_archive_duration=1440,
                reason="a Voices dialogue",
            )
        except discord.HTTPException:
            await self.s.store.finish_dialogue(
                child.id, StopReason.THREAD_GONE, "its thread could not be made", utc_now()
            )
            raise
        assert interaction.guild_id is not None
        carried = child.parent.turns if child.parent else 0
        room = await self.s.rooms.create(
            Room(
                child.id,
                interaction.guild_id,
                channel.id,
                thread.id,
                interaction.user.id,
                posted_seq=carried - 1,
            )
        )
        first = await thread.send(_lineage_line(child, parent_room), allowed_mentions=NO_MENTIONS)
        await self.s.rooms.set_opening_message(child.id, first.id)
        room = replace(room, opening_message_id=first.id)
        try:
            old = await self.bot.relays.thread_of(parent_room)
            await old.send(
                f"↪ Dialogue {child.id} goes on from here: {thread.jump_url}", allowed_mentions=NO_MENTIONS
            )
        except (discord.NotFound, discord.Forbidden):
            pass  # the earlier thread is gone; the new dialogue does not need it
        await self.bot.relays.start(room)
        await interaction.followup.send(
            f"Started dialogue {child.id} in {thread.mention}.", ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    # Looking ---------------------------------------------------------------------------------

    @app_commands.command(name="status")
    @app_commands.describe(dialogue="The dialogue's id (default: the one of this thread)")
    async def status(self, interaction: discord.Interaction, dialogue: int | None = None) -> None:
        """Show the live figures of a dialogue, and each voice's system prompt."""
        room = await self._room(interaction, dialogue)
        found = await self.s.store.get_dialogue(room.dialogue_id)
        tally, notes = await self.s.store.tally(found.id), await self.s.store.list_notes(found.id)
        embed = status_embed(found, tally, None, notes=notes)
        await interaction.response.send_message(
            embeds=[embed, prompts_embed(found)], ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="list")
    async def list_(self, interaction: discord.Interaction) -> None:
        """List this server's recent dialogues and how they ended."""
        assert interaction.guild_id is not None
        lines = []
        for room in await self.s.rooms.recent(interaction.guild_id):
            if may_see(interaction, room):
                lines.append(_line(await self.s.store.get_dialogue(room.dialogue_id), room))
        await reply(interaction, "\n".join(lines) or "No dialogues yet: `/voices start` begins one.")

    @app_commands.command(name="transcript")
    @app_commands.describe(dialogue="The dialogue's id")
    async def transcript(self, interaction: discord.Interaction, dialogue: int) -> None:
        """Post a finished dialogue's transcript files (.md and .json) here."""
        room = await self._room(interaction, dialogue)
        found = await self.s.store.get_dialogue(room.dialogue_id)
        if not found.status.is_final:
            raise StateError(f"dialogue {dialogue} has not ended yet; its transcript comes when it does")
        await interaction.response.defer(thinking=True)
        limit = (
            interaction.guild.filesize_limit
            if interaction.guild
            else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        )
        files = await transcript_files(self.s.store, found.id, limit)
        await interaction.followup.send(
            f"Transcript of dialogue {found.id}.", files=files, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="usage")
    @app_commands.describe(
        period="How far back (default: the last 30 days)",
        member="Whose spend (Manage Server needed for anyone but you)",
    )
    async def usage(
        self,
        interaction: discord.Interaction,
        period: Literal["today", "7 days", "30 days", "all"] = "30 days",
        member: discord.Member | None = None,
    ) -> None:
        """Who spent what in this server, by member, model and day, beside its caps (CSV attached)."""
        assert interaction.guild_id is not None
        governs = interaction.permissions.manage_guild
        if not governs and member is not None and member.id != interaction.user.id:
            raise InputError("another member's usage needs the Manage Server permission; leave member empty")
        who = member.id if member else (None if governs else interaction.user.id)
        since = usage_since(period, utc_now())
        reports = {by: await spend.report(self.s.store, by, since, interaction.guild_id, who) for by in PER}
        policy = await self.s.guilds.policy(interaction.guild_id)
        scope = f"<@{who}>" if who else "this server"
        text = usage_text(reports, scope, period, policy.daily_cap_guild, policy.daily_cap_member)
        files = [
            discord.File(io.BytesIO(spend.as_csv(rows, by).encode()), filename=f"usage-by-{by}.csv")
            for by, rows in reports.items()
        ]
        await interaction.response.send_message(
            text, files=files, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="forget")
    @app_commands.describe(member="Whose words to remove (Manage Server needed for anyone but you)")
    async def forget(self, interaction: discord.Interaction, member: discord.Member | None = None) -> None:
        """Remove what a member wrote in this server's dialogues (yours if nobody is named)."""
        assert interaction.guild_id is not None
        target = member or interaction.user
        if target.id != interaction.user.id and not interaction.permissions.manage_guild:
            raise InputError("forgetting another member needs the Manage Server permission")
        names = {target.name, target.display_name, getattr(target, "global_name", None) or target.name}
        done = await forget_member(self.s.store, interaction.guild_id, target.id, sorted(names))
        log.info(
            "forgot member %s in guild %s at %s's request: %s",
            target.id,
            interaction.guild_id,
            interaction.user.id,
            done.describe(),
        )
        whose = "your" if target.id == interaction.user.id else f"{target.mention}'s"
        await reply(
            interaction,
            f"Removed {whose} words from this server's dialogues: {done.describe()}. Transcripts "
            "fetched from now on show the marker instead; costs are kept, without the name.",
        )

    @app_commands.command(name="personas")
    async def personas(self, interaction: discord.Interaction) -> None:
        """List the personas you can name in /voices start."""
        lines = [f"**{key}** · {p.name} · `{p.model}`" for key, p in sorted(self.bot.personas.items())]
        lines.append(
            "Any model id from the catalogue works too, e.g. `z-ai/glm-5`; `me` takes a seat yourself."
        )
        await reply(interaction, "\n".join(lines))

    # Schedules -------------------------------------------------------------------------------

    schedule = app_commands.Group(
        name="schedule", description="Dialogues that start on their own, daily or weekly"
    )

    @schedule.command(name="add")
    @app_commands.describe(
        a="Who speaks first: a persona or a model id",
        b="Who answers: a persona or a model id",
        opening="The first message, the same every time",
        at="The time of day it starts, HH:MM in UTC (such as 18:00)",
        cadence="Every day, or once a week",
        weekday="For a weekly show: the day (monday … sunday)",
        rounds="Rounds each time (default: the server's default)",
        budget="Hard cap in USD each time",
        referee="A persona or model that gives a verdict at the end",
        channel="Where the show's threads open (default: here)",
    )
    @app_commands.autocomplete(a=speaker_choices, b=speaker_choices, referee=speaker_choices)
    async def schedule_add(
        self,
        interaction: discord.Interaction,
        a: app_commands.Range[str, 1, 200],
        b: app_commands.Range[str, 1, 200],
        opening: app_commands.Range[str, 1, 4000],
        at: app_commands.Range[str, 1, 5],
        cadence: Literal["daily", "weekly"] = "daily",
        weekday: app_commands.Range[str, 2, 9] | None = None,
        rounds: app_commands.Range[int, 1, 100] | None = None,
        budget: app_commands.Range[str, 1, 20] | None = None,
        referee: app_commands.Range[str, 1, 200] | None = None,
        channel: discord.TextChannel | None = None,
    ) -> None:
        """Put a dialogue on daily or weekly at a UTC time (Manage Server)."""
        assert interaction.guild_id is not None
        self._may_schedule(interaction)
        where = channel or interaction.channel
        if not isinstance(where, discord.TextChannel):
            raise InputError("give a text channel for the show's threads, or use this in one")
        kind = Cadence(cadence)
        day, clock = parse_weekday(kind, weekday), parse_clock(at)
        settings = self.bot.settings
        spend = parse_usd(budget) if budget else settings.default_budget
        spec = show_spec(self.bot, (a, b), opening, rounds or settings.default_rounds, spend, referee)
        added = await self.bot.shows.add(
            interaction.guild_id, where.id, interaction.user.id, spec, (a, b), referee, kind, clock, day
        )
        names = " ↔ ".join(p.name for p in spec.participants)
        await reply(
            interaction,
            f"Schedule {added.id}: {names}, {added.describe()} in {where.mention}, "
            f"{counted(added.rounds, 'round')}, budget "
            f"{format_usd(spend)}; first on {added.next_run_at.strftime('%Y-%m-%d %H:%M UTC')}.",
        )

    @schedule.command(name="list")
    async def schedule_list(self, interaction: discord.Interaction) -> None:
        """This server's scheduled shows: when each runs next, and any that stopped and why."""
        assert interaction.guild_id is not None
        shows = await self.bot.shows.schedules.of_guild(interaction.guild_id)
        lines = [_schedule_line(s) for s in shows]
        await reply(
            interaction, "\n".join(lines) or "No scheduled shows: `/voices schedule add` puts one on."
        )

    @schedule.command(name="remove")
    @app_commands.describe(schedule="The schedule's number (see /voices schedule list)")
    async def schedule_remove(self, interaction: discord.Interaction, schedule: int) -> None:
        """Take a scheduled show off (Manage Server); dialogues it started stay."""
        assert interaction.guild_id is not None
        self._may_schedule(interaction)
        removed = await self.bot.shows.schedules.remove(interaction.guild_id, schedule)
        await reply(interaction, f"Schedule {removed.id} ({removed.describe()}) is removed.")

    @staticmethod
    def _may_schedule(interaction: discord.Interaction) -> None:
        if not interaction.permissions.manage_guild:
            raise InputError("scheduling shows needs the Manage Server permission")

    # Settings --------------------------------------------------------------------------------

    @app_commands.command(name="config")
    @app_commands.describe(
        max_rounds="Most rounds one dialogue may have",
        max_budget="Most USD one dialogue may spend",
        daily_cap_server="Most USD the whole server may commit per day (UTC)",
        daily_cap_member="Most USD one member may commit per day (UTC)",
        max_concurrent="Most dialogues going at once in this server",
        reasoning="What to do with a model's reasoning text",
        allowed_models="Comma-separated model ids, or 'all'",
        interject_role="Members with this role may interject in any dialogue",
        polls="An audience vote (a Discord poll) at the end of each dialogue",
        poll_question="What the vote asks ('default' for: Who made the stronger case?)",
        poll_hours="How long the vote stays open, in hours (1 to 768)",
    )
    async def config(
        self,
        interaction: discord.Interaction,
        max_rounds: app_commands.Range[int, 1, 1000] | None = None,
        max_budget: str | None = None,
        daily_cap_server: str | None = None,
        daily_cap_member: str | None = None,
        max_concurrent: app_commands.Range[int, 1, 100] | None = None,
        reasoning: Literal["hide", "spoiler", "file"] | None = None,
        allowed_models: str | None = None,
        interject_role: discord.Role | None = None,
        polls: bool | None = None,
        poll_question: app_commands.Range[str, 1, 400] | None = None,
        poll_hours: app_commands.Range[int, 1, MAX_HOURS] | None = None,
    ) -> None:
        """Show or change this server's limits (Manage Server needed to change them)."""
        assert interaction.guild_id is not None
        changes: dict[str, object] = {}
        for name, value in (
            ("max_rounds", max_rounds),
            ("max_concurrent", max_concurrent),
            ("reasoning", reasoning),
        ):
            if value is not None:
                changes[name] = value
        for name, text in (
            ("max_budget", max_budget),
            ("daily_cap_guild", daily_cap_server),
            ("daily_cap_member", daily_cap_member),
        ):
            if text is not None:
                changes[name] = parse_usd(text, name.replace("_", " "))
        if allowed_models is not None:
            changes["allowed_models"] = await self._models(allowed_models)
        if interject_role is not None:
            changes["interject_role"] = interject_role.id
        if polls is not None:
            changes["polls"] = polls
        if poll_question is not None:
            default = poll_question.strip().lower() == "default"
            changes["poll_question"] = None if default else check_question(poll_question)
        if poll_hours is not None:
            changes["poll_hours"] = poll_hours
        if changes and not interaction.permissions.manage_guild:
            raise InputError("changing the server's limits needs the Manage Server permission")
        guilds = self.s.guilds
        policy = (
            await guilds.update(interaction.guild_id, **changes)
            if changes
            else await guilds.policy(interaction.guild_id)
        )
        models = "all" if policy.allowed_models is None else ", ".join(sorted(policy.allowed_models))
        asked = policy.poll_question or DEFAULT_QUESTION
        vote = f"“{asked}”, {policy.poll_hours} h" if policy.polls else "off"
        role = f"starter and <@&{policy.interject_role}>" if policy.interject_role else "starter only"
        await reply(
            interaction,
            (
                f"Rounds ≤ {policy.max_rounds} · budget ≤ {format_usd(policy.max_budget)} · per day: server "
                f"{format_usd(policy.daily_cap_guild)}, member {format_usd(policy.daily_cap_member)} · "
                f"{policy.max_concurrent} at once · reasoning: {policy.reasoning} · models: {models} · "
                f"interject: {role} · audience vote: {vote}"
            ),
        )

    async def _models(self, text: str) -> frozenset[str] | None:
        if text.strip().lower() == "all":
            return None
        ids = frozenset(part.strip() for part in text.split(",") if part.strip())
        for model_id in ids:
            await self.bot.catalogue.get(model_id)  # an unknown id is refused by name
        return ids


def _lineage_line(child: Dialogue, parent_room: Room) -> str:
    lineage = child.parent
    assert lineage is not None
    where = f"<#{parent_room.thread_id}>"
    if lineage.kind is LineageKind.FORK:
        return (
            f"Forked from dialogue {lineage.parent_id} ({where}) at turn {lineage.turns}: "
            f"turns 1–{lineage.turns} carry over."
        )
    if lineage.turns:
        carried = "its turn carries" if lineage.turns == 1 else f"all {lineage.turns} turns carry"
        return f"Continues dialogue {lineage.parent_id} ({where}): {carried} over."
    return f"Continues dialogue {lineage.parent_id} ({where}): every voice remembers it in a summary."


def _schedule_line(schedule: Schedule) -> str:
    voices = " ↔ ".join(schedule.voices)
    last = f" · last: dialogue {schedule.last_dialogue_id}" if schedule.last_dialogue_id else ""
    state = (
        f"**disabled:** {schedule.disabled}"
        if schedule.disabled
        else f"next {schedule.next_run_at.strftime('%Y-%m-%d %H:%M UTC')}"
    )
    return (
        f"**{schedule.id}** · {voices} · {schedule.describe()} in <#{schedule.channel_id}> · "
        f"{counted(schedule.rounds, 'round')}, {format_usd(schedule.budget_usd)} · {state}{last}"
    )


def _line(dialogue: Dialogue, room: Room) -> str:
    names = " ↔ ".join(p.name for p in dialogue.participants)
    state = str(dialogue.stop_reason) if dialogue.stop_reason else str(dialogue.status)
    spent = format_usd(dialogue.totals.spent_usd)
    origin = f" · {dialogue.parent.describe}" if dialogue.parent else ""
    return f"**{dialogue.id}** · {names} · {state} · {spent}{origin} · <#{room.thread_id}>"


async def setup(bot: VoicesBot) -> None:
    await bot.add_cog(VoicesCog(bot))
