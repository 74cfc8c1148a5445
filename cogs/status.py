"""The status message at the top of a dialogue's thread, and its Stop / Pause / Resume / Interject buttons;
the thread's first message (who asked what, and the voices), and the system prompts on request.

The buttons' custom ids carry the dialogue id, so they keep working after a restart: the click is
handled from the store, not from anything held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord

from bot.budget import format_usd
from bot.models import Dialogue, Note, NoteKind, Status, Tally, Usage
from bot.transcript import cache_effect
from cogs._format import fit_embed
from cogs.people import InterjectButton

if TYPE_CHECKING:
    from cogs.client import VoicesBot

COLOURS = {
    Status.PENDING: discord.Colour.light_grey(),
    Status.RUNNING: discord.Colour.blurple(),
    Status.PAUSED: discord.Colour.orange(),
    Status.FINISHED: discord.Colour.green(),
    Status.STOPPED: discord.Colour.dark_grey(),
    Status.FAILED: discord.Colour.red(),
}


def opening_text(dialogue: Dialogue, starter: str) -> str:
    """Return the thread's first message: who asked what (the asker named, mentioning nobody), and
    who sits in each seat with which model."""
    quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in dialogue.opening.splitlines())
    seats = " · ".join(
        f"**{discord.utils.escape_markdown(p.name)}** "
        + ("(a member)" if p.is_human else f"(`{discord.utils.escape_markdown(p.model)}`)")
        for p in dialogue.participants
    )
    text = f"{starter} opened dialogue {dialogue.id} with:\n{quoted}\n**Voices:** {seats}"
    if dialogue.referee is not None:
        name = discord.utils.escape_markdown(dialogue.referee.name)
        text += f"\n**Referee:** **{name}** (`{discord.utils.escape_markdown(dialogue.referee.model)}`)"
    return text


def prompts_embed(dialogue: Dialogue) -> discord.Embed:
    """Return each voice's system prompt, as the models were given it (cut to Discord's limits)."""
    embed = discord.Embed(title="System prompts")
    for persona in dialogue.participants:
        prompt = "(a member: no prompt)" if persona.is_human else persona.system_prompt or "(none)"
        embed.add_field(name=persona.name[:256], value=prompt[:1024], inline=False)
    if dialogue.referee is not None:
        prompt = dialogue.referee.system_prompt or "(none besides the referee's task)"
        embed.add_field(name=f"{dialogue.referee.name} (referee)"[:256], value=prompt[:1024], inline=False)
    return fit_embed(embed)


def status_embed(
    dialogue: Dialogue,
    tally: Tally,
    speaker: str | None,
    waiting: bool = False,
    notes: Sequence[Note] = (),
) -> discord.Embed:
    """Return the live figures of a dialogue: round, speaker, money, tokens per speaker, time, and
    the referee's latest verdict."""
    names = " ↔ ".join(p.name for p in dialogue.participants)
    count = len(dialogue.participants)
    done = tally.turns
    round_no = min(done // count + 1, dialogue.limits.max_rounds)
    embed = discord.Embed(title=names, colour=COLOURS[dialogue.status])
    if dialogue.status.is_final and dialogue.stop_reason is not None:
        detail = f" ({dialogue.stop_detail})" if dialogue.stop_detail else ""
        embed.description = f"**Ended:** {dialogue.stop_reason.describe}{detail}"
    elif dialogue.status is Status.PAUSED:
        embed.description = "**Paused.** Resume to carry on."
    else:
        doing = "Waiting for" if waiting else "Speaking"  # a member's turn: the thread waits for them
        embed.description = f"**{doing}:** {speaker}" if speaker else "**Running.**"
    embed.add_field(name="Round", value=f"{round_no}/{dialogue.limits.max_rounds}")
    embed.add_field(
        name="Spent",
        value=f"{format_usd(dialogue.totals.spent_usd)} of {format_usd(dialogue.limits.budget_usd)}",
    )
    embed.add_field(name="Time", value=_elapsed(dialogue))
    if tally.cached or tally.written:
        embed.add_field(
            name="Prompt cache",
            value=f"read {tally.cached} · written {tally.written} tokens · {cache_effect(tally.saved)}",
        )
    for seat, persona in enumerate(dialogue.participants):
        mine = tally.seats.get(seat, Usage())
        embed.add_field(
            name=f"{persona.name} · {'a person' if persona.is_human else persona.model}",
            value=(
                f"prompt {mine.prompt_tokens} · completion {mine.completion_tokens} · "
                f"reasoning {mine.reasoning_tokens}"
            ),
            inline=False,
        )
    if dialogue.vote is not None:
        vote = dialogue.vote
        embed.add_field(name=f"Audience · {vote.question}"[:256], value=vote.result[:1024], inline=False)
    judged = [n for n in notes if n.kind in (NoteKind.VERDICT, NoteKind.NO_VERDICT)]
    if judged:
        last = judged[-1]
        value = last.text if last.kind is NoteKind.VERDICT else f"(none: {last.text})"
        embed.add_field(name=f"Verdict · {last.author}"[:256], value=value[:1024], inline=False)
    embed.set_footer(text=f"Dialogue {dialogue.id}")
    return fit_embed(embed)


def _elapsed(dialogue: Dialogue) -> str:
    if dialogue.started_at is None:
        return "0 s"
    end = dialogue.ended_at or datetime.now(UTC)
    seconds = int((end - dialogue.started_at).total_seconds())
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


TEMPLATE = r"voices:(?P<action>stop|pause|resume):(?P<id>[0-9]+)"


class ControlButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """Stop, Pause or Resume one dialogue; only its starter and members who manage threads may."""

    LABELS = {
        "stop": ("Stop", discord.ButtonStyle.danger),
        "pause": ("Pause", discord.ButtonStyle.secondary),
        "resume": ("Resume", discord.ButtonStyle.success),
    }

    def __init__(self, action: str, dialogue_id: int):
        label, style = self.LABELS[action]
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"voices:{action}:{dialogue_id}")
        )
        self.action = action
        self.dialogue_id = dialogue_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> ControlButton:
        return cls(match["action"], int(match["id"]))

    @staticmethod
    def view_for(dialogue: Dialogue) -> discord.ui.View | None:
        """Return the buttons that fit the dialogue's state (none once it has ended)."""
        if dialogue.status.is_final:
            return None
        view = discord.ui.View(timeout=None)
        toggle = "resume" if dialogue.status is Status.PAUSED else "pause"
        view.add_item(ControlButton(toggle, dialogue.id))
        view.add_item(ControlButton("stop", dialogue.id))
        view.add_item(InterjectButton(dialogue.id))
        return view

    async def callback(self, interaction: discord.Interaction[VoicesBot]) -> None:  # type: ignore[override]
        cog: Any = interaction.client.get_cog("VoicesCog")
        await cog.control(interaction, self.action, self.dialogue_id)
