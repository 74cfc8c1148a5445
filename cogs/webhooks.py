"""One bot-owned webhook per parent channel, found or created once and recreated when deleted.

Discord allows 15 webhooks per channel, so personas share one and differ by username and avatar,
and every dialogue in the channel shares its rate limit. Its requests go through one FairQueue per
webhook: the dialogues take turns (one streaming fast cannot starve the others), an edit still
waiting is replaced by a newer edit of the same message, and discord.py paces each request by
the rate-limit headers Discord sends back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import discord

from bot.mailbox import FairQueue
from bot.metrics import Metrics
from cogs._format import sanitize_name

WEBHOOK_NAME = "Voices"
NO_MENTIONS = discord.AllowedMentions.none()


class WebhookPool:
    """Hand out the bot's webhook of a channel; `send` and `edit` recreate a deleted one once."""

    def __init__(self, client: discord.Client, metrics: Metrics | None = None):
        self._client = client
        self._metrics = metrics or Metrics()
        self._hooks: dict[int, discord.Webhook] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._queues: dict[int, FairQueue] = {}

    async def get(self, channel: discord.TextChannel) -> discord.Webhook:
        """Return the bot's webhook on `channel`, reusing one that exists."""
        lock = self._locks.setdefault(channel.id, asyncio.Lock())
        async with lock:  # two dialogues starting at once must not create two webhooks
            if channel.id not in self._hooks:
                self._hooks[channel.id] = await self._find_or_create(channel)
            return self._hooks[channel.id]

    async def _find_or_create(self, channel: discord.TextChannel) -> discord.Webhook:
        me = self._client.user
        for hook in await channel.webhooks():
            if hook.user is not None and me is not None and hook.user.id == me.id and hook.token:
                return hook
        return await channel.create_webhook(name=WEBHOOK_NAME, reason="Voices posts each persona through it")

    async def send(
        self, thread: discord.Thread, name: str, avatar_url: str | None, content: str = "", **extra: Any
    ) -> discord.WebhookMessage:
        """Post into the thread as a persona; mentions are never delivered."""
        message: discord.WebhookMessage = await self._queued(
            thread,
            None,
            lambda hook: hook.send(
                content,
                username=sanitize_name(name),
                avatar_url=avatar_url,
                thread=thread,
                wait=True,
                allowed_mentions=NO_MENTIONS,
                **extra,
            ),
        )
        return message

    async def edit(self, thread: discord.Thread, message_id: int, content: str) -> None:
        """Replace the text of a persona's message (a newer edit waiting in line replaces this one)."""
        await self._queued(
            thread,
            ("edit", message_id),
            lambda hook: hook.edit_message(
                message_id, content=content, thread=thread, allowed_mentions=NO_MENTIONS
            ),
        )

    async def delete(self, thread: discord.Thread, message_id: int) -> None:
        """Delete a persona's message (a reply that was restarted); a missing one is already gone."""
        try:
            await self._queued(thread, None, lambda hook: hook.delete_message(message_id, thread=thread))
        except discord.NotFound:
            pass

    async def _queued(self, thread: discord.Thread, key: Hashable | None, call: Any) -> Any:
        """Make the request when the thread's turn on its channel's webhook comes."""
        parent = thread.parent
        assert isinstance(parent, discord.TextChannel)
        queue = self._queues.setdefault(parent.id, FairQueue())
        return await queue.run(thread.id, lambda: self._with_retry(parent, call), key)

    async def _with_retry(self, parent: discord.TextChannel, call: Any) -> Any:
        self._metrics.discord_requests.labels("webhook").inc()
        hook = await self.get(parent)
        try:
            return await call(hook)
        except discord.HTTPException as exc:
            if exc.status == 429:  # past discord.py's own retries (each of those is counted as logged)
                self._metrics.discord_rate_limited.inc()
            if not isinstance(exc, discord.NotFound):
                raise
            if exc.code != 10015:  # Unknown Webhook; anything else is the caller's business
                raise
            self._hooks.pop(parent.id, None)
            return await call(await self.get(parent))
