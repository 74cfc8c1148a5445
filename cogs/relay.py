"""Showing a running dialogue in its thread: the status message, each persona's streamed turns, the end.

The engine decides everything; this module only turns its events into Discord messages. One
`Relay` task per dialogue, kept by `Relays`, so an error in one dialogue never touches another.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import discord

from bot.app import utc_now
from bot.control import Control, nap
from bot.dialogue import DialogueRunner
from bot.errors import LeaseHeld
from bot.events import (
    AwaitingHuman,
    Delta,
    Ended,
    Event,
    Noted,
    Started,
    TurnFinished,
    TurnRestarted,
    TurnStarted,
)
from bot.guilds import GuildStore
from bot.mailbox import Mailbox
from bot.metrics import Metrics
from bot.models import Ask, Dialogue, NoteKind, Status, StopReason, Tally, Turn, TurnStatus
from bot.rooms import Room, RoomStore
from bot.store import WORK, Store
from bot.transcript import headline
from bot.votes import VoteStore
from cogs._format import split_message, split_tail
from cogs.files import transcript_files
from cogs.people import SayButton
from cogs.status import ControlButton, opening_text, status_embed
from cogs.webhooks import NO_MENTIONS, WebhookPool

log = logging.getLogger(__name__)

# Discord tolerates about five edits per five seconds on a message; one a second leaves room.
EDIT_INTERVAL = 1.0
# How often a worker looks for dialogues nobody runs (on PostgreSQL a gateway's NOTIFY wakes it sooner).
CLAIM_SECONDS = 1.0
# How long the end of a turn is retried before the thread is told the transcript has the rest.
FINAL_PATIENCE = 600.0
LANDING_FAILED = "⚠ Discord kept refusing the end of turn {turn}; the transcript files have its whole text."


def now() -> float:
    """Seconds for the edit throttle. A test harness with virtual time (SimCord) may swap in a
    real clock, since Discord's rate limits run on real time."""
    return time.monotonic()


async def pause(seconds: float) -> None:
    """Wait before an edit that would come too soon; a harness may swap in a real-time wait."""
    await asyncio.sleep(seconds)


async def wait_for_member(waiting: Awaitable[bool]) -> bool:
    """Wait on the outside: a member's words in their turn, the lease's next renewal, or the next
    event of the engine (which is itself waiting on one of those, or working). A harness that must
    know which waits are for outside input (SimCord) may swap in its own."""
    return await waiting


def _outside(waiting: Awaitable[bool]) -> Awaitable[bool]:
    return wait_for_member(waiting)  # looked up at each call, so a harness's swap takes effect


@dataclass
class _Live:
    """The turn being streamed: its text so far and the messages showing it.

    `shown` is what each message was last asked to say, `confirmed` what Discord accepted (a
    message without a slot's id, 0, stands for a piece of nothing but white space).
    """

    seq: int
    name: str
    avatar_url: str | None
    text: str = ""
    messages: list[int] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    edited_at: list[float] = field(default_factory=list)
    #: The pieces before `offset` are final (a later message has begun); `opener` is the code fence
    #: open there and `final` how many messages they fill. Only the tail is split again.
    offset: int = 0
    opener: str | None = None
    final: int = 0
    #: When the oldest piece not yet sent to Discord arrived (for the token-to-Discord latency).
    unshown_since: float | None = None


@dataclass(slots=True)
class _Deferred:
    """An edit waiting out its second, and since when the text it shows has waited for Discord."""

    task: asyncio.Task[None]
    since: float | None


def _posted(live: _Live) -> tuple[int, ...]:
    return tuple(m for m in live.messages if m)


def _line_under(turn: Turn) -> str | None:
    """The line posted under a turn that did not end as its model ended it, or None."""
    if turn.status is TurnStatus.EMPTY:
        return "*⚠ Empty reply: nothing was passed on to the other side.*"
    if turn.status is TurnStatus.CANCELLED:
        return "*✂ Cut off.*"
    return f"*✂ {turn.cut_short}*" if turn.cut_short else None


def _merge(old: Event, new: Event) -> Event | None:
    """Pieces of one reply that queued up while Discord was slow travel as one."""
    if isinstance(old, Delta) and isinstance(new, Delta):
        if old.seq == new.seq and old.reasoning == new.reasoning:
            return Delta(old.seq, old.text + new.text, old.reasoning)
    return None


class Relay:
    """Post one dialogue's events into its thread."""

    def __init__(
        self,
        services: Services,
        room: Room,
        thread: discord.Thread,
        control: Control,
        starter: str | None = None,
    ):
        self._s = services
        self.room = room
        #: Who opened the dialogue, as its first message names them (a mention that pings nobody).
        self._starter = starter
        self.thread = thread
        self.control = control
        self._live: _Live | None = None
        self._status: discord.Message | None = None
        self._speaker: str | None = None
        #: The turns' figures as last read: only a turn's end changes them.
        self._tally: Tally | None = None
        self._gone = False
        #: Each message's edit waiting out its second, and since when its text has waited.
        self._deferred: dict[int, _Deferred] = {}
        #: After Discord refused a streamed post: seconds to wait, and until when (relay.now()).
        self._cool_down = 0.0
        self._quiet_until = 0.0
        #: A model's reply is being written (a member's words are not welcome until it is done).
        self.speaking = False
        #: The message asking a member for their turn: this run's, or one a paused or crashed run left.
        self._asking_id: int | None = room.asking_message_id
        self._waiting = False

    async def run(self) -> None:
        """Catch up on what a crash left unposted, then follow the dialogue to its end or pause.

        The dialogue runs in a task of its own and drops its events in a mailbox: however slow
        Discord is (429s, a shared webhook), the engine never waits for a post or an edit.
        """
        await self._post_opening(self._starter)
        await self._catch_up()
        box: Mailbox[Event] = Mailbox(_merge, idle=_outside)
        feeding = asyncio.create_task(self._feed(box), name=f"voices-engine-{self.room.dialogue_id}")
        try:
            await self._follow(box)
        finally:
            if not feeding.done():
                feeding.cancel()
            await asyncio.wait({feeding})
            for deferred in self._deferred.values():
                deferred.task.cancel()

    async def _feed(self, box: Mailbox[Event]) -> None:
        try:
            async for event in self._s.runner.run(self.room.dialogue_id, self.control):
                self._s.metrics.observe(self.room.dialogue_id, event)
                box.put(event)
        except Exception as exc:  # the display says it, once it has shown what came before
            box.close(exc)
        else:
            box.close()

    async def _follow(self, box: Mailbox[Event]) -> None:
        async for event in box:
            try:
                await self._show(event)
            except (discord.NotFound, discord.Forbidden) as exc:
                self._lost(exc)
            except discord.HTTPException as exc:
                # discord.py already retried rate limits and 5xx; one post that still fails must not
                # end the dialogue, and the end of the turn is made to land (see _land). Until the
                # cool-down is over, streamed pieces only gather: asking again at every piece would
                # hammer a Discord that said no, and take the engine's event loop with it.
                self._cool_down = min(max(self._cool_down * 2, 1.0), 30.0)
                self._quiet_until = now() + self._cool_down
                log.warning(
                    "dialogue %s: a post failed (%s); streaming resumes in %.0f s",
                    self.room.dialogue_id,
                    exc,
                    self._cool_down,
                )

    def _lost(self, exc: discord.HTTPException) -> None:
        """The thread was deleted or locked: stop the dialogue with that reason, post nothing more."""
        if not self._gone:
            log.warning("dialogue %s lost its thread: %s", self.room.dialogue_id, exc)
            self._gone = True
            self.control.stop(
                now=True, reason=StopReason.THREAD_GONE, detail=f"Discord said: {exc.text or exc}"
            )

    async def _show(self, event: Event) -> None:
        if self._gone:
            return
        match event:
            case Started(dialogue=dialogue):
                await self._update_status(dialogue)
            case AwaitingHuman(persona=persona):
                self._speaker = persona.name
                member = int(persona.human_id or 0)
                await self._forget_asking()
                asking = await self.thread.send(
                    f"<@{member}>, your turn as **{discord.utils.escape_markdown(persona.name)}** "
                    f"(round {event.round}): press **Your turn**, or use `/voices say`.",
                    view=discord.ui.View(timeout=None).add_item(SayButton(self.room.dialogue_id)),
                    # The one mention Voices ever makes: the member whose turn it is.
                    allowed_mentions=discord.AllowedMentions(users=[discord.Object(member)]),
                )
                self._asking_id, self._waiting = asking.id, True
                await self._s.rooms.set_asking_message(self.room.dialogue_id, asking.id)
                await self._update_status(None, recount=False)
            case TurnStarted():
                self.speaking = not event.persona.is_human
                await self._forget_asking()
                self._speaker = event.persona.name
                self._live = _Live(event.seq, event.persona.name, event.persona.avatar_url)
                await self._update_status(None, recount=False)
            case Delta(reasoning=False):
                assert self._live is not None
                self._live.text += event.text
                if self._live.unshown_since is None:
                    self._live.unshown_since = now()
                if now() >= self._quiet_until:
                    await self._flush(force=False)
                    self._cool_down = 0.0  # Discord took it: the next refusal starts again at 1 s
            case TurnRestarted():
                await self._discard_live()
            case TurnFinished(turn=turn):
                self.speaking = False
                await self._finish_turn(turn)
                self._speaker = None
                await self._update_status(None)
            case Noted(note=note) if note.kind is NoteKind.VERDICT:
                # The referee speaks as its own persona, like the voices it judges.
                referee = (await self._s.store.get_dialogue(self.room.dialogue_id)).referee
                avatar = referee.avatar_url if referee else None
                for chunk in split_message(f"**⚖ Verdict**\n{note.text}"):
                    await self._s.webhooks.send(self.thread, note.author or "Referee", avatar, chunk)
                await self._update_status(None)
            case Noted(note=note):
                # In the bot's own voice, not a persona's: the thread sees what the engine did.
                await self.thread.send(headline(note)[:2000], allowed_mentions=NO_MENTIONS)
                if note.kind is NoteKind.COMPACTED:
                    for chunk in split_message(note.text):
                        await self.thread.send(chunk, allowed_mentions=NO_MENTIONS)
            case Ended(dialogue=dialogue):
                self.speaking = False
                await self._settle_edits()
                if self._waiting and dialogue.status is Status.PAUSED and self._asking_id is not None:
                    # Kept, with its button: answering it resumes the dialogue.
                    name = discord.utils.escape_markdown(self._speaker or "")
                    await self.thread.get_partial_message(self._asking_id).edit(
                        content=f"Paused, waiting for **{name}**: press **Your turn** when you are "
                        "ready, and the dialogue goes on."
                    )
                else:
                    await self._forget_asking()
                self._waiting = False
                await self._update_status(dialogue)
                if dialogue.status.is_final:
                    await self._post_end(dialogue)

    async def _forget_asking(self) -> None:
        """The member answered, or is asked again, or the dialogue ended: the Your turn message
        (this run's, or one a paused or crashed run left) has done its job."""
        self._waiting = False
        if self._asking_id is None:
            return
        asking, self._asking_id = self._asking_id, None
        try:
            await self.thread.get_partial_message(asking).delete()
        except discord.NotFound:
            pass
        await self._s.rooms.set_asking_message(self.room.dialogue_id, None)

    # Turns -----------------------------------------------------------------------------------

    async def _flush(self, force: bool) -> None:
        live = self._live
        assert live is not None
        moment = now()
        since, live.unshown_since = live.unshown_since, None
        parts = split_tail(live.text[live.offset :], live.opener)
        for n, (piece, chunk, after) in enumerate(parts):
            index = live.final + n
            done = n < len(parts) - 1  # a later message has begun: this one's text is final
            if index >= len(live.messages) and (chunk.strip() or done):
                await self._post_piece(live, chunk, moment)
                self._shown(since)
            elif index < len(live.messages) and live.messages[index] and chunk != live.shown[index]:
                if force or done or moment - live.edited_at[index] >= EDIT_INTERVAL:
                    await self._edit(live, index, chunk, since)
            if done:
                live.offset, live.opener, live.final = live.offset + len(piece), after, live.final + 1

    async def _post_piece(self, live: _Live, chunk: str, moment: float) -> None:
        """Start the next message of the reply (none for a piece of nothing but white space)."""
        message_id = 0
        if chunk.strip():
            message = await self._s.webhooks.send(self.thread, live.name, live.avatar_url, chunk)
            message_id = message.id
        live.messages.append(message_id)
        live.shown.append(chunk)
        live.confirmed.append(chunk)
        live.edited_at.append(moment)
        await self._s.rooms.set_live_messages(self.room.dialogue_id, _posted(live))

    def _shown(self, since: float | None) -> None:
        """Count how long the oldest piece just shown waited to reach Discord."""
        if since is not None:
            self._s.metrics.token_to_discord.observe(max(now() - since, 0.0))

    async def _edit(self, live: _Live, index: int, chunk: str, since: float | None = None) -> None:
        """Edit one message now, or, if its last edit was under a second ago, in the background
        once the second is over: never two edits a second, and the dialogue never waits for it."""
        wait = EDIT_INTERVAL - (now() - live.edited_at[index])
        message_id = live.messages[index]
        live.shown[index], live.edited_at[index] = chunk, now() + max(wait, 0)
        if wait <= 0:
            await self._s.webhooks.edit(self.thread, message_id, chunk)
            live.confirmed[index] = chunk
            self._shown(since)
            return
        previous = self._deferred.pop(message_id, None)
        if previous is not None:
            previous.task.cancel()
            # The edit it replaces never went out: its text waits from the earlier time still.
            waiting = previous.since
            since = min(s for s in (since, waiting) if s is not None) if since or waiting else None
        task = asyncio.create_task(self._edit_later(wait, live, index, chunk, since))
        self._deferred[message_id] = _Deferred(task, since)

    async def _edit_later(
        self, wait: float, live: _Live, index: int, chunk: str, since: float | None = None
    ) -> None:
        message_id = live.messages[index]
        await pause(wait)
        try:
            await self._s.webhooks.edit(self.thread, message_id, chunk)
            live.confirmed[index] = chunk
            self._shown(since)
        except (discord.NotFound, discord.Forbidden) as exc:
            self._lost(exc)
        except discord.HTTPException as exc:
            # The turn's end makes sure its final text lands (see _land).
            log.warning("dialogue %s: an edit failed (%s)", self.room.dialogue_id, exc)
        finally:
            deferred = self._deferred.get(message_id)
            if deferred is not None and deferred.task is asyncio.current_task():
                del self._deferred[message_id]

    async def _land(self, live: _Live) -> None:
        """Make the thread show a finished turn's whole text: what Discord refused (a 429 past
        discord.py's retries, a 5xx) is tried again, backing off, for FINAL_PATIENCE seconds;
        after that the thread and the log say the transcript has the rest."""
        delay, deadline = 1.0, now() + FINAL_PATIENCE
        while True:
            try:
                await self._flush(force=True)
                await self._settle_edits()
                for index, message_id in enumerate(live.messages):
                    if message_id and live.confirmed[index] != live.shown[index]:
                        await self._s.webhooks.edit(self.thread, message_id, live.shown[index])
                        live.confirmed[index] = live.shown[index]
                return
            except (discord.NotFound, discord.Forbidden):
                raise
            except discord.HTTPException as exc:
                if now() + delay > deadline:
                    log.error(
                        "dialogue %s: turn %d never fully reached Discord (%s)",
                        self.room.dialogue_id,
                        live.seq + 1,
                        exc,
                    )
                    await self.thread.send(
                        LANDING_FAILED.format(turn=live.seq + 1), allowed_mentions=NO_MENTIONS
                    )
                    return
                log.warning(
                    "dialogue %s: Discord refused turn %d's text (%s); again in %.0f s",
                    self.room.dialogue_id,
                    live.seq + 1,
                    exc,
                    delay,
                )
                await pause(delay)
                delay = min(delay * 2, 30.0)

    async def _settle_edits(self) -> None:
        """Wait for the edits still waiting out their second (before the dialogue's end is posted)."""
        if self._deferred:
            await asyncio.gather(*(d.task for d in self._deferred.values()), return_exceptions=True)

    async def _discard_live(self) -> None:
        """A retry starts the reply again: remove what was shown of the failed attempt."""
        live = self._live
        if live is None:
            return
        for message_id in _posted(live):
            if (pending := self._deferred.pop(message_id, None)) is not None:
                pending.task.cancel()
            await self._s.webhooks.delete(self.thread, message_id)
        self._live = _Live(live.seq, live.name, live.avatar_url)
        await self._s.rooms.set_live_messages(self.room.dialogue_id, ())

    async def _finish_turn(self, turn: Turn) -> None:
        live = self._live or _Live(turn.seq, turn.speaker, None)
        if not turn.text.startswith(live.text[: live.offset]):
            live.offset, live.opener, live.final = 0, None, 0  # split it all again
        live.text = turn.text  # the committed text is the truth, whatever the stream showed
        await self._land(live)
        # On record as soon as its text is in the thread: a line under it that Discord refuses, or
        # a crash before that line, must not have a restart post the whole turn again.
        await self._s.rooms.mark_posted(self.room.dialogue_id, turn.seq, _posted(live))
        self._live = None
        if line := _line_under(turn):
            await self._s.webhooks.send(self.thread, live.name, live.avatar_url, line)
        await self._post_reasoning(turn, live)

    async def _post_reasoning(self, turn: Turn, live: _Live) -> None:
        if not turn.reasoning.strip():
            return
        mode = (await self._s.guilds.policy(self.room.guild_id)).reasoning
        if mode == "file":
            file = discord.File(io.BytesIO(turn.reasoning.encode()), filename=f"reasoning-{turn.seq + 1}.txt")
            await self._s.webhooks.send(self.thread, live.name, live.avatar_url, "*Reasoning:*", file=file)
        elif mode == "spoiler":
            text = turn.reasoning.replace("||", "|\u200b|")
            for chunk in split_message(text, limit=1990):
                await self._s.webhooks.send(self.thread, live.name, live.avatar_url, f"||{chunk}||")

    async def _post_opening(self, starter: str | None = None) -> None:
        """Begin the thread with the opening and the voices, unless that is done: the one place it
        is posted, so a process that died between making the thread and posting it is made good."""
        if self.room.opening_message_id is not None:
            return
        dialogue = await self._s.store.get_dialogue(self.room.dialogue_id)
        who = starter or (f"<@{self.room.starter_id}>" if self.room.starter_id else "A member")
        first = None
        for chunk in split_message(opening_text(dialogue, who)):
            sent = await self.thread.send(chunk, allowed_mentions=NO_MENTIONS)
            first = first or sent
        assert first is not None
        await self._s.rooms.set_opening_message(dialogue.id, first.id)
        self.room = replace(self.room, opening_message_id=first.id)

    async def _catch_up(self) -> None:
        """After a restart: finish the last posted turn's text (its closing edit may have been
        waiting out its second), drop the half-streamed turn's messages, post the turns not shown."""
        turns = await self._s.store.list_turns(self.room.dialogue_id)
        if self.room.posted_message_ids and 0 <= self.room.posted_seq < len(turns):
            chunks = [c for c in split_message(turns[self.room.posted_seq].text) if c.strip()]
            for message_id, chunk in zip(self.room.posted_message_ids, chunks, strict=False):
                try:
                    await self._s.webhooks.edit(self.thread, message_id, chunk)
                except discord.NotFound:
                    pass
        for message_id in self.room.live_message_ids:
            await self._s.webhooks.delete(self.thread, message_id)
        dialogue = await self._s.store.get_dialogue(self.room.dialogue_id)
        for turn in turns:
            if turn.seq > self.room.posted_seq:
                persona = dialogue.participants[turn.seat]
                self._live = _Live(turn.seq, persona.name, persona.avatar_url)
                await self._finish_turn(turn)

    # Status and end --------------------------------------------------------------------------

    async def _update_status(self, dialogue: Dialogue | None, recount: bool = True) -> None:
        """Redraw the status; a turn's start or a member's wait (`recount` False) shows the turns'
        figures as the last turn's end left them, since nothing else adds a turn."""
        dialogue = dialogue or await self._s.store.get_dialogue(self.room.dialogue_id)
        if recount or self._tally is None:
            self._tally = await self._s.store.tally(dialogue.id)
        tally = self._tally
        notes = await self._s.store.list_notes(dialogue.id) if dialogue.referee else ()
        embed = status_embed(dialogue, tally, self._speaker, waiting=self._waiting, notes=notes)
        view = ControlButton.view_for(dialogue)
        if self._status is None and self.room.status_message_id is not None:
            self._status = self.thread.get_partial_message(self.room.status_message_id)  # type: ignore[assignment]
        if self._status is None:
            if view is None:  # an already ended dialogue: no buttons
                self._status = await self.thread.send(embed=embed, allowed_mentions=NO_MENTIONS)
            else:
                self._status = await self.thread.send(embed=embed, view=view, allowed_mentions=NO_MENTIONS)
            await self._s.rooms.set_status_message(dialogue.id, self._status.id)
        else:
            await self._status.edit(embed=embed, view=view)

    async def _post_end(self, dialogue: Dialogue) -> None:
        # The audience vote comes before the closing message, which stays the thread's last word.
        for hook in self._s.on_end:
            try:
                await hook(dialogue, self.thread)
            except Exception:  # a failed extra never holds back the transcripts
                log.exception("dialogue %s: an end-of-dialogue step failed", dialogue.id)
        files = await transcript_files(self._s.store, dialogue.id, self.thread.guild.filesize_limit)
        reason = dialogue.stop_reason.describe if dialogue.stop_reason else str(dialogue.status)
        await self.thread.send(
            f"Dialogue {dialogue.id} ended: {reason}.", files=files, allowed_mentions=NO_MENTIONS
        )
        parent = self.thread.parent
        if isinstance(parent, discord.TextChannel):
            names = " ↔ ".join(p.name for p in dialogue.participants)
            await parent.send(
                f"Dialogue {dialogue.id} ({names}) ended: {reason}. {self.thread.jump_url}",
                allowed_mentions=NO_MENTIONS,
            )


@dataclass
class Services:
    """What the Discord side uses of the engine."""

    store: Store
    runner: DialogueRunner
    rooms: RoomStore
    guilds: GuildStore
    webhooks: WebhookPool
    votes: VoteStore
    metrics: Metrics = field(default_factory=Metrics)
    #: What else happens in a thread once its dialogue has ended, before its transcripts are posted
    #: (the audience vote): each is called in turn, and one that fails does not stop the others.
    on_end: list[Callable[[Dialogue, discord.Thread], Awaitable[None]]] = field(default_factory=list)


class Relays:
    """The running relay of each dialogue, with its Control; at most one per dialogue.

    With `hand_over` (a gateway with workers), a dialogue to start or resume is left in the
    database for a worker instead; a worker's `claim_forever` takes it up.
    """

    def __init__(self, client: discord.Client, services: Services, hand_over: bool = False):
        self._client = client
        self._s = services
        self._hand_over = hand_over
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._relays: dict[int, Relay] = {}

    def running(self) -> int:
        """Return how many dialogues this process runs now."""
        return len(self._tasks)

    def is_running(self, dialogue_id: int) -> bool:
        return dialogue_id in self._tasks

    def control(self, dialogue_id: int) -> Control:
        """Return the Control of a running dialogue (KeyError if it is not running)."""
        return self._relays[dialogue_id].control

    def is_speaking(self, dialogue_id: int) -> bool:
        """Return whether a model's reply is being written in this dialogue right now."""
        relay = self._relays.get(dialogue_id)
        return relay is not None and relay.speaking

    async def thread_of(self, room: Room) -> discord.Thread:
        """Return the room's thread (fetched if it is not cached); discord.NotFound if it is gone."""
        thread = self._client.get_channel(room.thread_id) or await self._client.fetch_channel(room.thread_id)
        assert isinstance(thread, discord.Thread)  # a room's id is always a thread's
        return thread

    async def start(
        self,
        room: Room,
        stop: bool = False,
        said: str | None = None,
        starter: str | None = None,
        patient: bool = True,
    ) -> None:
        """Run the dialogue of this room in the background, posting into its thread.

        With `stop`, the run ends at once as stopped by the user: how a paused dialogue is stopped,
        with its final status and transcript posted like any other end. `said` is a member's words
        for the turn the dialogue paused on. `starter` is who opened it, as the thread's first message
        names them (by default, a mention of the room's starter). A `patient` start that finds the
        dialogue held by another process waits for that lease to lapse; an impatient one (a
        worker's claim, which another worker won) lets it go.

        Handing over, a plain start or resume is left for a worker; a stop or a member's words
        for a paused dialogue are run here, since they end or answer it at once.
        """
        if room.dialogue_id in self._tasks:
            return
        if self._hand_over and not stop and said is None:
            await self._s.store.hand_over(room.dialogue_id)
            return
        thread = await self.thread_of(room)
        control = Control(outside=_outside)
        if stop:
            # At once: a paused dialogue has no turn in flight, and if another process took the
            # dialogue up a moment ago, the stop it is passed on as is the one a member asked for.
            control.stop(now=True)
        if said is not None:
            control.say(said)
        relay = Relay(self._s, room, thread, control, starter)
        self._relays[room.dialogue_id] = relay
        task = asyncio.create_task(self._guard(relay, patient), name=f"voices-dialogue-{room.dialogue_id}")
        self._tasks[room.dialogue_id] = task

    async def _guard(self, relay: Relay, patient: bool) -> None:
        dialogue_id = relay.room.dialogue_id
        try:
            while True:
                try:
                    await relay.run()
                    break
                except LeaseHeld as exc:
                    # A stop or a member's words meant for a dialogue another process took up a
                    # moment ago (a worker's claim): that process is the one to be asked.
                    if exc.seconds_left is not None and await self._forward(relay):
                        log.info("dialogue %s: passed on to the process that runs it", dialogue_id)
                        break
                    # Another process runs it, or ran it and died: once its lease lapses, this
                    # process takes the dialogue over (the restart path after a crash).
                    if exc.seconds_left is None or not patient:
                        raise
                    log.warning("dialogue %s: %s; trying again then", dialogue_id, exc)
                    await asyncio.sleep(exc.seconds_left + 0.5)
        except LeaseHeld as exc:
            log.warning("dialogue %s is no longer run here: %s", dialogue_id, exc)
        except Exception:  # one dialogue's failure is logged and never reaches another
            log.exception("relay of dialogue %s failed", dialogue_id)
        finally:
            self._tasks.pop(dialogue_id, None)
            self._relays.pop(dialogue_id, None)

    async def _forward(self, relay: Relay) -> bool:
        """Ask what this relay was started to do (a stop, a member's words) of the process that
        holds the dialogue; False when it was started to run, which is not a thing to ask."""
        dialogue_id, control = relay.room.dialogue_id, relay.control
        if control.stop_requested:
            return await self._s.store.ask(dialogue_id, Ask.of("stop", control.stop_now))
        if (said := control.take_said()) is not None:
            return await self._s.store.ask(dialogue_id, Ask.SAY, said)
        return False

    async def resume_all(self) -> None:
        """After a restart, carry on every dialogue that was running or about to."""
        await self._start_each(await self._s.rooms.in_states(Status.RUNNING, Status.PENDING), True)

    async def _start_each(self, rooms: list[Room], patient: bool) -> None:
        for room in rooms:
            try:
                await self.start(room, patient=patient)
            except (discord.NotFound, discord.Forbidden):
                await self._s.store.finish_dialogue(
                    room.dialogue_id, StopReason.THREAD_GONE, "the thread is gone", utc_now()
                )

    async def claim_forever(self, capacity: int) -> None:
        """Run, up to `capacity` at a time, the dialogues nobody runs: left by a gateway for a
        worker, or by a process that stopped or died (once its lease lapsed). Looks every
        CLAIM_SECONDS, and at once when a gateway says it left one (PostgreSQL's NOTIFY)."""
        async with self._s.store.watch(WORK, 0) as left:
            while True:
                try:
                    await self.claim(capacity)
                except Exception:  # a busy database or Discord now is no reason to stop working
                    log.exception("looking for dialogues to run failed; looking again")
                await _outside(nap(CLAIM_SECONDS, left))

    async def claim(self, capacity: int) -> list[int]:
        """Look once for dialogues nobody runs and start those that fit under `capacity`; return
        their ids. Another worker may take one first: then this one lets it go."""
        free = capacity - len(self._tasks)
        if free <= 0:
            return []
        rooms = [
            r for r in await self._s.rooms.unclaimed(utc_now(), free) if r.dialogue_id not in self._tasks
        ]
        await self._start_each(rooms, patient=False)
        return [r.dialogue_id for r in rooms]

    async def wait(self, dialogue_id: int) -> None:
        """Wait until the dialogue's relay has finished (for tests and shutdown)."""
        task = self._tasks.get(dialogue_id)
        if task is not None:
            await asyncio.wait({task})

    async def close(self) -> None:
        """Cancel every relay; their dialogues stay `running` and resume on the next start."""
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))
