"""The audience vote in Discord: a native poll posted in the thread when a dialogue ends, and its tally
read back, kept, and shown once the poll has closed."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import discord

from bot.deadlines import Deadlines
from bot.models import Dialogue, Status
from bot.votes import DEFAULT_QUESTION, Posted, answers_for
from cogs.files import transcript_files
from cogs.relay import Services
from cogs.webhooks import NO_MENTIONS

log = logging.getLogger(__name__)

#: Discord finalises a poll a moment after it expires; past this grace its counts are taken as they are.
FINALISING = timedelta(minutes=10)


class _Finalising(Exception):
    """Discord has not finalised the poll yet: its tally is read at a later tick."""


NO_PERMISSION = (
    "No audience vote: I lack the **Send Polls** permission here. A manager can grant it, or turn "
    "votes off with `/voices config polls:False`."
)


class Polls:
    """Open a dialogue's vote at its end, and close the votes whose time is up."""

    def __init__(self, client: discord.Client, services: Services):
        self._client = client
        self._s = services
        self._deadlines = Deadlines(services.votes.earliest)

    async def open(self, dialogue: Dialogue, thread: discord.Thread) -> None:
        """Ask the audience, if the server wants it and there was a dialogue to judge."""
        if dialogue.vote is not None or dialogue.status is Status.FAILED:
            return
        if not any(not t.inherited for t in await self._s.store.list_turns(dialogue.id)):
            return
        policy = await self._s.guilds.policy(thread.guild.id)
        if not policy.polls:
            return
        me = thread.guild.me  # None in a worker, which has no gateway's member cache: it just tries
        if me is not None and not thread.permissions_for(me).send_polls:
            await thread.send(NO_PERMISSION, allowed_mentions=NO_MENTIONS)
            return
        question = policy.poll_question or DEFAULT_QUESTION
        answers = answers_for([p.name for p in dialogue.participants])
        hours = timedelta(hours=policy.poll_hours)
        poll = discord.Poll(question=question, duration=hours)
        for answer in answers:
            poll.add_answer(text=answer)
        try:
            message = await thread.send(poll=poll, allowed_mentions=NO_MENTIONS)
        except discord.Forbidden:  # the permission was taken away a moment ago
            await thread.send(NO_PERMISSION, allowed_mentions=NO_MENTIONS)
            return
        opened = discord.utils.utcnow()
        where = (thread.id, message.id)
        await self._s.votes.open(dialogue.id, question, answers, where, opened, opened + hours)
        self._deadlines.added(opened + hours)

    async def close_due(self, now: datetime) -> list[int]:
        """Read the tally of every vote whose time is up, keep it, and post it with the transcripts
        made again; return the dialogues whose vote closed."""
        closed: list[int] = []
        if not await self._deadlines.due(now):
            return closed
        self._deadlines.forget()
        for posted in await self._s.votes.due(now):
            try:
                counts = await self._tally(posted, now)
            except _Finalising:
                continue
            except discord.HTTPException as exc:  # Discord is slow or down: the next tick tries again
                log.warning("dialogue %s: reading its vote failed (%s); later", posted.dialogue_id, exc)
                continue
            if not await self._s.votes.close(posted.dialogue_id, counts, now):
                continue
            closed.append(posted.dialogue_id)
            if counts is not None:
                await self._announce(posted)
        return closed

    async def _tally(self, posted: Posted, now: datetime) -> list[int] | None:
        """Return the votes per answer, or None when the poll's message is gone."""
        try:
            channel = await self._thread(posted)
            if channel is None:
                return None
            message = await channel.fetch_message(posted.message_id)
        except (discord.NotFound, discord.Forbidden):
            return None
        poll = message.poll
        if poll is None:
            return None
        expires = poll.expires_at or now
        if not poll.is_finalised() and now < expires + FINALISING:
            raise _Finalising
        return [answer.vote_count for answer in poll.answers]

    async def _thread(self, posted: Posted) -> discord.Thread | None:
        """Return the vote's thread, fetched when it is not cached (a day on, it is often archived,
        and after a restart never cached); None if it is no thread any more."""
        channel = self._client.get_channel(posted.channel_id)
        if channel is None:
            channel = await self._client.fetch_channel(posted.channel_id)
        return channel if isinstance(channel, discord.Thread) else None

    async def _announce(self, posted: Posted) -> None:
        dialogue = await self._s.store.get_dialogue(posted.dialogue_id)
        assert dialogue.vote is not None
        try:
            channel = await self._thread(posted)
            if channel is None:
                return
            files = await transcript_files(self._s.store, dialogue.id, channel.guild.filesize_limit)
            await channel.send(
                f"🗳 The audience has voted: {dialogue.vote.question} {dialogue.vote.result}. "
                "The transcripts below include the tally.",
                files=files,
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:  # kept all the same: /voices transcript has it
            log.warning("dialogue %s: posting its vote failed: %s", dialogue.id, exc)
