"""Members in a dialogue: the Your turn and Interject buttons, the modals they open, and a member's seat.

The buttons are DynamicItems whose custom ids carry the dialogue id, so they keep working after a
restart; what a modal returns goes to the cog, which checks who may say what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

from bot.errors import VoicesError
from bot.models import HUMAN, Persona
from cogs.errors import reply, user_message

if TYPE_CHECKING:
    from cogs.client import VoicesBot
    from cogs.voices import VoicesCog

# What a member types in /voices start to take a seat themselves.
ME = "me"


def seat_of(member: discord.Member | discord.User) -> Persona:
    """Return the persona of a member sitting in a dialogue: their display name and avatar."""
    return Persona(
        name=member.display_name,
        model=f"{HUMAN}{member.id}",
        avatar_url=str(member.display_avatar.url),
    )


def _cog(interaction: discord.Interaction[VoicesBot]) -> VoicesCog:
    cog: Any = interaction.client.get_cog("VoicesCog")
    return cog  # type: ignore[no-any-return]


async def _guarded(interaction: discord.Interaction[VoicesBot], action: Any) -> None:
    """Run a component's action; a refusal is one ephemeral line, as for slash commands."""
    try:
        await action
    except VoicesError as exc:
        await reply(interaction, f"⚠ {user_message(exc)}")


class SayModal(discord.ui.Modal):
    """What a member says in their turn (up to 4,000 characters)."""

    def __init__(self, dialogue_id: int, name: str):
        super().__init__(title=f"Your turn as {name}"[:45], custom_id=f"voices:saymodal:{dialogue_id}")
        self.dialogue_id = dialogue_id
        self.words: discord.ui.TextInput[SayModal] = discord.ui.TextInput(
            label="What you say",
            style=discord.TextStyle.paragraph,
            min_length=1,
            max_length=4000,
            custom_id="words",
        )
        self.add_item(self.words)

    async def on_submit(self, interaction: discord.Interaction[VoicesBot]) -> None:  # type: ignore[override]
        await _guarded(interaction, _cog(interaction).say(interaction, self.dialogue_id, self.words.value))


class InterjectModal(discord.ui.Modal):
    """A spectator's short note, which every model reads at the next turn boundary."""

    def __init__(self, dialogue_id: int, max_chars: int):
        super().__init__(title="Interject", custom_id=f"voices:interjectmodal:{dialogue_id}")
        self.dialogue_id = dialogue_id
        self.words: discord.ui.TextInput[InterjectModal] = discord.ui.TextInput(
            label="Your note to the models",
            style=discord.TextStyle.paragraph,
            min_length=1,
            max_length=max_chars,
            custom_id="words",
        )
        self.add_item(self.words)

    async def on_submit(self, interaction: discord.Interaction[VoicesBot]) -> None:  # type: ignore[override]
        await _guarded(
            interaction, _cog(interaction).interject(interaction, self.dialogue_id, self.words.value)
        )


class SayButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"voices:say:(?P<id>[0-9]+)"):
    """Your turn: opens the modal for the member whose seat speaks next (and refuses anyone else)."""

    def __init__(self, dialogue_id: int):
        super().__init__(
            discord.ui.Button(
                label="Your turn", style=discord.ButtonStyle.primary, custom_id=f"voices:say:{dialogue_id}"
            )
        )
        self.dialogue_id = dialogue_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> SayButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[VoicesBot]) -> None:  # type: ignore[override]
        async def open_modal() -> None:
            _room, persona = await _cog(interaction).seat_to_speak(interaction, self.dialogue_id)
            await interaction.response.send_modal(SayModal(self.dialogue_id, persona.name))

        await _guarded(interaction, open_modal())


class InterjectButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"voices:interject:(?P<id>[0-9]+)"
):
    """Interject: opens the modal for a member who may add a note to the dialogue."""

    def __init__(self, dialogue_id: int):
        super().__init__(
            discord.ui.Button(
                label="Interject",
                style=discord.ButtonStyle.secondary,
                custom_id=f"voices:interject:{dialogue_id}",
            )
        )
        self.dialogue_id = dialogue_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> InterjectButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[VoicesBot]) -> None:  # type: ignore[override]
        async def open_modal() -> None:
            cog = _cog(interaction)
            await cog.may_interject(interaction, self.dialogue_id)
            max_chars = interaction.client.settings.interject_max_chars
            await interaction.response.send_modal(InterjectModal(self.dialogue_id, max_chars))

        await _guarded(interaction, open_modal())
