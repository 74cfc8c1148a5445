"""One error path for every slash command and button: the error becomes one ephemeral line.

Priority, first match wins: our own VoicesError (its message already names the fix), Discord's
permission and check failures, bad option values, and last anything else (logged, with a short
apology that leaks nothing).
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import VoicesError

log = logging.getLogger(__name__)


def user_message(error: BaseException) -> str:
    """Return the one line a member sees for this error."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, VoicesError):
        return str(error)
    if isinstance(error, app_commands.BotMissingPermissions):
        missing = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"I need these permissions in this channel: {missing}; ask a server admin to grant them"
    if isinstance(error, app_commands.MissingPermissions):
        missing = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"you need {missing} to do that"
    if isinstance(error, app_commands.NoPrivateMessage):
        return "Voices works in servers, not in direct messages"
    if isinstance(error, app_commands.TransformerError):
        return f"'{error.value}' is not a valid value for that option"
    if isinstance(error, app_commands.CheckFailure):
        return "you can't use this command here"
    log.error("unexpected error in a command", exc_info=error)
    return "something went wrong on our side; it has been logged"


async def reply(interaction: discord.Interaction, text: str) -> None:
    """Answer ephemerally, whether or not the interaction was already acknowledged."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
    else:
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


class ErrorsCog(commands.Cog):
    """Route every application-command error through `user_message`."""

    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self._previous = bot.tree.on_error

    async def cog_load(self) -> None:
        self.bot.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]

    async def cog_unload(self) -> None:
        self.bot.tree.on_error = self._previous  # type: ignore[method-assign]

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply(interaction, f"⚠ {user_message(error)}")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ErrorsCog(bot))
