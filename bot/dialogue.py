"""The dialogue engine: who speaks next, what it costs at most, streaming each reply, and when to stop.

`DialogueRunner.run` is an async iterator of events that any front end (terminal, Discord) renders.
Every turn is committed before the next one starts, so `run` on the same id resumes after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from bot.billing import charge_lost
from bot.budget import (
    Budget,
    count_bytes,
    estimate_prompt_tokens,
    format_usd,
    worst_case_cost,
)
from bot.context import Compactor
from bot.control import Control
from bot.errors import InputError, LeaseHeld, ProviderError, StateError
from bot.events import (
    AwaitingHuman,
    Ended,
    Event,
    Noted,
    Started,
    TurnFinished,
    TurnStarted,
)
from bot.loops import Lookout
from bot.models import (
    HUMAN_SOURCE,
    MAX_SEED,
    Ask,
    ContextPolicy,
    Dialogue,
    DialogueSpec,
    LineageKind,
    LoopAction,
    ModelInfo,
    Note,
    NoteKind,
    Status,
    StopReason,
    Turn,
    TurnStatus,
    Usage,
    new_seed,
)
from bot.plan import Halted, Stop, Tuning, TurnPlan, max_tokens_of, tokens_left, tokens_per_byte
from bot.prompts import Prompts, Window, build_messages, current_window
from bot.providers import Router
from bot.referee import Referee, already_judged, due
from bot.retry import RetryPolicy
from bot.store import ASKS, Store
from bot.summary import Summariser, summariser
from bot.text import counted
from bot.turn import TurnPlayer

log = logging.getLogger(__name__)

MAX_PARTICIPANTS = 8

#: Seconds between looks for a stop or a pause another process asked for.
ASK_SECONDS = 1.0


def _apply(control: Control, action: Ask, text: str | None) -> None:
    """Do to the running dialogue what another process asked."""
    if action is Ask.PAUSE:
        control.pause()
    elif action is Ask.SAY:
        control.say(text or "")
    else:
        control.stop(now=action is Ask.STOP_NOW, detail="stopped from another process")


# Validation ------------------------------------------------------------------------------------


def validate_spec(spec: DialogueSpec, max_rounds: int, max_budget: Decimal) -> None:
    """Raise InputError, naming the problem and the fix, for a spec that cannot run."""
    limits = spec.limits
    if not 2 <= len(spec.participants) <= MAX_PARTICIPANTS:
        raise InputError(
            f"a dialogue needs 2 to {MAX_PARTICIPANTS} participants, not {len(spec.participants)}"
        )
    if all(p.is_human for p in spec.participants):
        raise InputError("every seat is a person; a dialogue needs at least one model")
    if not spec.opening.strip():
        raise InputError("the opening message is empty; give the first speaker something to answer")
    # Carried-over rounds do not count against the limit: it is about what this dialogue plays.
    rounds = limits.max_rounds - carried_rounds(len(spec.inherited), len(spec.participants))
    if not 1 <= rounds <= max_rounds:
        raise InputError(f"rounds must be between 1 and {max_rounds} (VOICES_MAX_ROUNDS), not {rounds}")
    if not Decimal(0) < limits.budget_usd <= max_budget:
        raise InputError(
            f"budget must be above $0 and at most ${max_budget} (VOICES_MAX_BUDGET), not ${limits.budget_usd}"
        )
    if limits.max_total_tokens is not None and limits.max_total_tokens < 1:
        raise InputError("the token limit must be at least 1")
    if limits.max_seconds is not None and limits.max_seconds <= 0:
        raise InputError("the time limit must be above 0 seconds")
    if spec.seed is not None and not 0 <= spec.seed <= MAX_SEED:
        raise InputError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {spec.seed}")
    if spec.referee_every is not None and spec.referee is None:
        raise InputError("a verdict every few rounds needs a referee; give one (--referee)")
    if spec.referee_every is not None and not 1 <= spec.referee_every <= limits.max_rounds:
        raise InputError(
            f"the referee's interval must be from 1 to the rounds ({limits.max_rounds}), "
            f"not {spec.referee_every}"
        )
    if spec.referee is not None and spec.referee.is_human:
        raise InputError("the referee must be a model; a person can judge in the thread")
    for persona in (*spec.participants, *([spec.referee] if spec.referee else [])):
        if persona.max_tokens is not None and persona.max_tokens < 16:
            raise InputError(f"{persona.name}: max_tokens must be at least 16 (some providers refuse less)")


def carried_rounds(turns: int, participants: int) -> int:
    """Return the rounds that `turns` carried-over turns began (a round cut short counts)."""
    return -(-turns // participants)


# The runner ------------------------------------------------------------------------------------


class DialogueRunner:
    """Create dialogues and run them turn by turn, persisting each turn as it completes."""

    def __init__(
        self,
        store: Store,
        router: Router,
        clock: Callable[[], datetime],
        *,
        max_rounds: int,
        max_budget: Decimal,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tuning: Tuning | None = None,
    ):
        self.store = store
        self.router = router
        self._clock = clock
        self._max_rounds = max_rounds
        self._max_budget = max_budget
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self.player = TurnPlayer(store, router, self._retry, sleep, clock, tuning or Tuning())
        self.summariser = Summariser(store, router, self._retry, sleep, clock)
        self.compactor = Compactor(store, router, self.summariser, clock)
        self.referee = Referee(store, router, self.summariser, clock)
        # Dialogues running in this process: a second run of one would write every turn twice.
        self._active: set[int] = set()

    @property
    def tuning(self) -> Tuning:
        """How long dialogues are kept cheap and going; one value, which the turn player reads too."""
        return self.player.tuning

    @tuning.setter
    def tuning(self, tuning: Tuning) -> None:
        self.player.tuning = tuning

    async def create(self, spec: DialogueSpec) -> Dialogue:
        """Validate the spec against the limits and the catalogue, then store it as pending."""
        await self.check(spec)
        if spec.seed is None:
            spec = replace(spec, seed=new_seed())
        return await self.store.create_dialogue(spec, self._clock())

    async def _check_opening_fits(self, spec: DialogueSpec, seat: int) -> None:
        """Raise InputError when the first model to speak (after any people before it) cannot be
        shown its system prompt and the opening, which every window keeps. Its call has no calls
        before it to measure tokens by, so the run would bound it by bytes in the same way, and
        stop there, having made the dialogue for nothing."""
        count = len(spec.participants)
        seats = ((seat + k) % count for k in range(count))
        speaker = next(s for s in seats if not spec.participants[s].is_human)
        persona = spec.participants[speaker]
        model = await self.router.model(persona)
        reply = max_tokens_of(persona, model)
        alone = count_bytes(build_messages(spec.participants, speaker, spec.opening, ()))
        if model.context_length is not None and alone + reply > model.context_length:
            raise InputError(
                f"{persona.name}'s system prompt and the opening could be {alone:,} tokens, which with "
                f"{reply:,} for the reply exceed {model.id}'s context of {model.context_length:,}; "
                "shorten the opening or choose a model with a longer context"
            )

    async def check(self, spec: DialogueSpec) -> Decimal:
        """Raise InputError for a spec that cannot run; return the first call's worst-case cost."""
        validate_spec(spec, self._max_rounds, self._max_budget)
        for persona in spec.participants:
            await self.router.model(persona)
        if spec.summary_model is not None:
            await self.router.model(summariser(spec.summary_model, spec.participants[0], 16))
        # The first call is the next speaker's, after any turns carried over.
        seq = len(spec.inherited)
        seat = seq % len(spec.participants)
        first = spec.participants[seat]
        model = await self.router.model(first)
        notes = spec.inherited_notes
        messages = build_messages(
            spec.participants, seat, spec.opening, spec.inherited, current_window(notes), notes
        )
        await self._check_opening_fits(spec, seat)
        reply = max_tokens_of(first, model)
        prompt = estimate_prompt_tokens(count_bytes(messages))
        worst = worst_case_cost(model.pricing, prompt, reply)
        if worst > spec.limits.budget_usd:
            raise InputError(
                f"budget ${spec.limits.budget_usd} is below the worst case of the first call "
                f"(${worst:.6f}); raise the budget or lower max_tokens"
            )
        # The run bounds its first call the same way (no call before it to count by), and would stop
        # there, having made the dialogue for nothing. Carried-over turns are not in its totals.
        limit = spec.limits.max_total_tokens
        if limit is not None and not first.is_human and prompt + reply > limit:
            raise InputError(
                f"the token limit of {limit:,} cannot hold the first call (its prompt and a reply of up "
                f"to {reply:,} could be {prompt + reply:,} tokens); raise the token limit or lower max_tokens"
            )
        if spec.referee is not None:
            # Said now, not after the rounds were paid for: the verdict must fit beside the first call.
            draft = _draft(spec, self._clock())
            verdict = await self.referee.reserve(draft, spec.inherited, notes, max_tokens_of(first, model))
            if worst + verdict > spec.limits.budget_usd:
                raise InputError(
                    f"budget ${spec.limits.budget_usd} cannot pay for the first call (up to ${worst:.6f}) "
                    f"and the referee's verdict (up to ${verdict:.6f}); raise the budget or give the "
                    "referee a lower max_tokens"
                )
        return worst

    async def extend(self, dialogue_id: int, rounds: int) -> Dialogue:
        """Add rounds to a dialogue; one that ended on its round limit waits to be resumed."""
        dialogue = await self.store.get_dialogue(dialogue_id)
        reopen = dialogue.status.is_final
        if reopen and dialogue.stop_reason is not StopReason.MAX_ROUNDS:
            raise StateError(f"dialogue {dialogue_id} has ended ({dialogue.stop_reason}); start a new one")
        total = dialogue.limits.max_rounds + rounds
        if rounds < 1 or total > self._max_rounds:
            raise InputError(
                f"a dialogue can have at most {counted(self._max_rounds, 'round')}; "
                f"it has {dialogue.limits.max_rounds}"
            )
        await self.store.extend_rounds(dialogue_id, total, reopen)
        return await self.store.get_dialogue(dialogue_id)

    async def interject(self, dialogue_id: int, author: str, text: str, author_id: str | None = None) -> Note:
        """Store a spectator's note for every model to read at the next turn boundary."""
        if not text.strip():
            raise InputError("the interjection is empty; say something")
        dialogue = await self.store.get_dialogue(dialogue_id)
        if dialogue.status.is_final:
            raise StateError(f"dialogue {dialogue_id} has ended; its models no longer read notes")
        return await self.store.add_interjection(dialogue_id, author, text.strip(), self._clock(), author_id)

    async def run(self, dialogue_id: int, control: Control | None = None) -> AsyncGenerator[Event, None]:
        """Run (or resume) the dialogue until a limit, a stop, a pause or an error; yield what happens."""
        if dialogue_id in self._active:
            raise StateError(f"dialogue {dialogue_id} is already running")
        control = control or Control()
        await self.store.get_dialogue(dialogue_id)  # an unknown id is named as such, not as a lease
        await self.store.take_lease(dialogue_id, self.tuning.lease_seconds)
        # Asks left for a process that died before it took them: those of the last two lease
        # windows were asked of the dialogue as it ran, and this run carries it on (a worker
        # taking over once the lease lapsed), so a member's stop is not lost with the process.
        # Older ones were meant for a run long over: a stop asked hours ago must not end the
        # dialogue someone resumes now.
        for action, text in await self.store.take_asks(dialogue_id, within=2 * self.tuning.lease_seconds):
            log.info(
                "dialogue %s: %s, asked of the process that ran it before, is done here", dialogue_id, action
            )
            _apply(control, action, text)
        self._active.add(dialogue_id)
        keeper = asyncio.create_task(self._keep_lease(dialogue_id, control))
        try:
            async for event in self._run(dialogue_id, control):
                yield event
        finally:
            keeper.cancel()
            await asyncio.wait({keeper})
            self._active.discard(dialogue_id)
            if control.lost_lease is None:
                await asyncio.shield(self.store.release_lease(dialogue_id))

    async def _keep_lease(self, dialogue_id: int, control: Control) -> None:
        """Renew the lease while the dialogue runs, and take what other processes ask of it (a stop,
        a pause) within a second. If another process took the lease over, stop at once: from then on
        only that process may write the dialogue."""
        async with self.store.watch(ASKS, dialogue_id) as asked:
            await self._keep(dialogue_id, control, asked)

    async def _keep(self, dialogue_id: int, control: Control, asked: asyncio.Event | None) -> None:
        seconds = self.tuning.lease_seconds
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await control.idle(min(ASK_SECONDS, seconds / 3), asked)
            try:
                for action, text in await self.store.take_asks(dialogue_id):
                    _apply(control, action, text)
            except Exception as exc:  # a busy database: the ask waits for the next look
                log.warning(
                    "dialogue %s: looking for stops asked from elsewhere failed (%s)", dialogue_id, exc
                )
            if loop.time() - renewed < seconds / 3:
                continue
            try:
                held = await self.store.renew_lease(dialogue_id, seconds)
            except Exception as exc:  # a busy database now is no reason to give the dialogue up
                log.warning("dialogue %s: renewing its lease failed (%s); trying again", dialogue_id, exc)
                continue
            renewed = loop.time()
            if not held:
                log.warning("dialogue %s: another process took its lease over; stopping here", dialogue_id)
                control.lose_lease(f"dialogue {dialogue_id} was taken over by another process")
                return

    async def ask(self, dialogue_id: int, action: Ask) -> bool:
        """Stop or pause the dialogue, whichever process runs it. True when it was left for the
        process that runs it, which takes it within ASK_SECONDS; False when no process runs it, and
        then a stop ends it here (a pause has nothing to pause)."""
        if action is Ask.SAY:  # a person's words come with the text, through the store's ask
            raise ValueError("ask stops and pauses; give a person's words with Store.ask")
        dialogue = await self.store.get_dialogue(dialogue_id)
        if dialogue.status.is_final:
            reason = dialogue.stop_reason.describe if dialogue.stop_reason else dialogue.status
            verb = "pause" if action is Ask.PAUSE else "stop"
            raise StateError(f"dialogue {dialogue_id} has ended ({reason}); there is nothing to {verb}")
        if await self.store.ask(dialogue_id, action):
            return True
        if action is Ask.PAUSE:
            raise StateError(f"dialogue {dialogue_id} is not running ({dialogue.status}); nothing to pause")
        control = Control()
        control.stop(detail="stopped while no process ran it")
        async for _ in self.run(dialogue_id, control):
            pass
        return False

    async def _run(self, dialogue_id: int, control: Control) -> AsyncIterator[Event]:
        dialogue = await self.store.get_dialogue(dialogue_id)
        if dialogue.status.is_final:
            reason = dialogue.stop_reason.describe if dialogue.stop_reason else dialogue.status
            raise StateError(f"dialogue {dialogue_id} has ended ({reason}); start a new one")
        # A run stopped before it begins (`voices stop`, or the Stop button, of a dialogue no process
        # ran) plans no call: it needs no catalogue, which may be out of reach, the reason to stop.
        stopping = control.stop_requested
        models = [] if stopping else [await self.router.model(p) for p in dialogue.participants]
        await self.store.settle_interrupted_calls(dialogue_id, await self._lost_calls_billed(dialogue))
        if lost := await self._lost_memory(dialogue):
            # A continuation whose summary was cut off by a crash would run without its memory.
            await self.store.finish_dialogue(dialogue_id, StopReason.INTERNAL_ERROR, lost, self._clock())
            yield Ended(await self.store.get_dialogue(dialogue_id))
            return
        await self.store.mark_running(dialogue_id, self._clock())
        dialogue = await self.store.get_dialogue(dialogue_id)
        yield Started(dialogue)

        stop: Stop | None = Stop(control.reason, control.detail) if stopping else None
        try:
            if not stopping:
                async for event in self._turns(dialogue, models, control):
                    if isinstance(event, Stop):
                        stop = event
                    else:
                        yield event
        except ProviderError as exc:
            stop = Stop(StopReason.PROVIDER_ERROR, str(exc))
        except StateError:
            raise  # another process owns the dialogue; its state is not ours to change
        except Exception as exc:
            log.exception("dialogue %s failed", dialogue_id)
            stop = Stop(StopReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        if control.lost_lease is not None:
            raise LeaseHeld(control.lost_lease)  # the dialogue's state is the new holder's to write
        if stop is None or stop.reason is None:
            await self.store.mark_paused(dialogue_id)
        else:
            if (verdict := await self._final_verdict(dialogue_id, stop.reason, control)) is not None:
                yield Noted(verdict)
            await self.store.finish_dialogue(dialogue_id, stop.reason, stop.detail, self._clock())
        yield Ended(await self.store.get_dialogue(dialogue_id))

    async def _final_verdict(self, dialogue_id: int, reason: StopReason, control: Control) -> Note | None:
        """Let the referee judge a dialogue that came to its end (not one stopped by a member or
        failed), once: a resumed run finds the verdict already there."""
        dialogue, turns, notes = await self.store.history(dialogue_id)
        played = [t for t in turns if not t.inherited]
        if dialogue.referee is None or reason.status is not Status.FINISHED or not played:
            return None
        if already_judged(notes, len(turns)):
            return None
        budget = Budget(dialogue.limits.budget_usd, dialogue.totals.spent_usd)
        return await self.referee.judge(dialogue, turns, notes, budget, control, final=True)

    async def _lost_calls_billed(self, dialogue: Dialogue) -> dict[int, Decimal]:
        """Ask the providers what the calls a dead process left in flight cost, where they can say."""
        billed = {}
        for seq, reserved, generation_id in await self.store.calls_in_flight(dialogue.id):
            persona = dialogue.participants[seq % len(dialogue.participants)]
            if generation_id is None or persona.is_human:
                continue
            charged = await charge_lost(self.router.route(persona).provider, generation_id, reserved)
            if charged.source == "reported":
                billed[seq] = charged.cost
        return billed

    async def _lost_memory(self, dialogue: Dialogue) -> str | None:
        """Say why a continuation cannot run: it was to remember in summary, and no memory was kept."""
        parent = dialogue.parent
        if parent is None or parent.kind is not LineageKind.CONTINUE or parent.turns:
            return None
        if any(n.kind is NoteKind.MEMORY for n in await self.store.list_notes(dialogue.id)):
            return None
        return (
            f"its summary of dialogue {parent.parent_id} was never written (the process stopped while "
            f"writing it); continue dialogue {parent.parent_id} again"
        )

    async def _turns(
        self, dialogue: Dialogue, models: list[ModelInfo], control: Control
    ) -> AsyncIterator[Event | Stop]:
        """Yield events turn after turn, then one Stop; return without one to pause."""
        turns = await self.store.list_turns(dialogue.id)
        # Interjections left while the dialogue was paused count as new: reported at the first boundary.
        reported = {
            n.id
            for n in await self.store.list_notes(dialogue.id)
            if n.kind is NoteKind.INTERJECTION and n.before_seq < len(turns)
        }
        totals = dialogue.totals
        budget = Budget(dialogue.limits.budget_usd, totals.spent_usd)
        lookout = self._lookout(dialogue)
        prompts = Prompts()
        loop = asyncio.get_running_loop()
        deadline = None
        if dialogue.limits.max_seconds is not None:
            # The limit counts the time spent on calls, so a pause or a crash does not use it up;
            # and this dialogue's own calls, as its budget and token limit do, not those of the
            # turns a fork or a continuation carried over.
            used = sum(t.latency_ms for t in turns if not t.inherited) / 1000
            deadline = loop.time() + dialogue.limits.max_seconds - used
        while True:
            # Spectators' interjections are stored as they come; each joins the history here, at the
            # turn boundary, and is reported once: by what was reported, not by what was read (a
            # verdict reads the notes between two boundaries, and would hide one left meanwhile).
            notes = await self.store.list_notes(dialogue.id)
            for note in notes:
                if note.kind is NoteKind.INTERJECTION and note.id not in reported:
                    reported.add(note.id)
                    yield Noted(note)
            plan = self._plan(dialogue, models, turns, notes, prompts)
            if limit := self._check_limits(dialogue, plan, control, deadline):
                if limit.reason is not None:
                    yield limit
                return
            assert plan is not None
            steps: AsyncIterator[Event | Turn | Stop]
            if plan.persona.is_human:
                steps = self._human_turn(dialogue, plan, control)
            else:
                if (overflow := plan.overflow()) is not None:
                    if dialogue.context_policy is ContextPolicy.STOP:
                        yield Stop(StopReason.CONTEXT_LIMIT, overflow)
                        return
                    try:
                        note = await self.compactor.make_room(
                            dialogue, plan, turns, notes, budget, control, deadline, self.tuning
                        )
                    except Halted as halted:
                        yield Stop(halted.reason, halted.detail)
                        return
                    yield Noted(note)
                    dialogue = await self.store.get_dialogue(dialogue.id)
                    totals = dialogue.totals
                    continue
                if limit := self._check_tokens(dialogue, plan, totals.total_tokens):
                    yield limit
                    return
                worst = worst_case_cost(plan.model.pricing, plan.prompt_estimate, plan.max_tokens)
                held = await self.referee.reserve(dialogue, turns, notes, plan.max_tokens)
                reservation = budget.reserve(worst) if budget.remaining - held >= worst else None
                if reservation is None:
                    yield Stop(StopReason.BUDGET, _budget_detail(plan, worst, budget, held))
                    return
                yield TurnStarted(plan.seq, plan.round, plan.seat, plan.persona, worst)
                steps = self.player.play(dialogue, plan, reservation, budget, control, deadline)
            turn: Turn | None = None
            stop = None
            #: What the turn's bill noted: shown after the turn it is about, not glued to its text.
            bill_notes: list[Noted] = []
            async for item in steps:
                if isinstance(item, Turn):
                    turn = item
                elif isinstance(item, Stop):
                    stop = item
                elif isinstance(item, Noted) and turn is not None:
                    bill_notes.append(item)
                else:
                    yield item
            # Read the dialogue again: its totals moved, and its round limit may have been extended;
            # and the speaker's prices, which a bill above them has just refreshed.
            fresh = await self.store.get_dialogue(dialogue.id)
            models[plan.seat] = await self.router.model(plan.persona)
            totals = fresh.totals
            if fresh.participants != dialogue.participants:
                # A seat changed under the run: a member was forgotten, and their turns with them.
                # The history is read again, so no later prompt carries what they asked to remove.
                turns = await self.store.list_turns(dialogue.id)
                lookout = self._lookout(fresh)
            elif turn is not None:
                turns.append(turn)
            dialogue = fresh
            if turn is not None:
                yield TurnFinished(turn, totals.spent_usd)
                for noted in bill_notes:
                    yield noted
                if stop is None and turn.status is TurnStatus.OK:
                    async for found in self._notice_loops(dialogue, turns, lookout):
                        if isinstance(found, Stop):
                            stop = found
                        else:
                            yield found
                if stop is None and due(dialogue, turn) and not already_judged(notes, len(turns)):
                    notes = await self.store.list_notes(dialogue.id)
                    # An interim verdict may not spend what the final one is held back for.
                    held = await self.referee.reserve(dialogue, turns, notes)
                    interim = Budget(budget.limit - held, totals.spent_usd)
                    verdict = await self.referee.judge(dialogue, turns, notes, interim, control, final=False)
                    yield Noted(verdict)
                    notes.append(verdict)  # the newest note: the store's order is the same
                    dialogue = await self.store.get_dialogue(dialogue.id)
                    totals = dialogue.totals
                    budget = Budget(dialogue.limits.budget_usd, totals.spent_usd)
            if stop is not None:
                if stop.reason is not None:
                    yield stop
                return

    async def _human_turn(
        self, dialogue: Dialogue, plan: TurnPlan, control: Control
    ) -> AsyncIterator[Event | Turn | Stop]:
        """A person's turn: wait for their words, then commit them as a free turn.

        When the wait passes the turn timeout the dialogue pauses; it goes on once they answer.
        """
        text = control.take_said()
        if text is None:
            timeout = self.tuning.human_timeout
            yield AwaitingHuman(plan.seq, plan.round, plan.seat, plan.persona, timeout)
            text = await control.wait_for_said(timeout)
        if text is None or not text.strip():
            yield Stop(control.reason, control.detail) if control.stop_requested else Stop(None)
            return
        started = self._clock()
        yield TurnStarted(plan.seq, plan.round, plan.seat, plan.persona, Decimal(0))
        turn = Turn(
            dialogue_id=dialogue.id,
            seq=plan.seq,
            round=plan.round,
            seat=plan.seat,
            speaker=plan.persona.name,
            status=TurnStatus.OK,
            text=text.strip(),
            reasoning="",
            usage=Usage(),
            cost_usd=Decimal(0),
            cost_source=HUMAN_SOURCE,
            model_used=plan.persona.model,
            finish_reason=None,
            latency_ms=0,
            attempts=1,
            started_at=started,
            ended_at=self._clock(),
        )
        await self.store.add_turn(turn)
        yield turn

    def _plan(
        self,
        dialogue: Dialogue,
        models: list[ModelInfo],
        turns: Sequence[Turn],
        notes: Sequence[Note],
        prompts: Prompts,
    ) -> TurnPlan | None:
        seq = len(turns)
        count = len(dialogue.participants)
        round_no, seat = divmod(seq, count)
        if round_no >= dialogue.limits.max_rounds:
            return None
        persona, model = dialogue.participants[seat], models[seat]
        window = current_window(notes)
        # The seat's last prompt is measured before the next one replaces it in `prompts`.
        known = _calibration(dialogue, seat, turns, window, notes, prompts)
        prompt = prompts.build(dialogue.participants, seat, dialogue.opening, turns, window, notes)
        estimate = estimate_prompt_tokens(prompt.size, known)
        max_tokens = max_tokens_of(persona, model)
        rate = 1.0
        if model.context_length is not None and estimate + max_tokens > model.context_length:
            # Only a request the byte bound says may not fit needs the observed rate (it rebuilds
            # an earlier prompt), so the common turn does not pay for it.
            rate = tokens_per_byte(dialogue, turns, notes)
        return TurnPlan(
            seq,
            round_no + 1,
            seat,
            persona,
            model,
            prompt.messages,
            prompt.size,
            max_tokens,
            estimate,
            window,
            rate,
            tokens_before=dialogue.totals.total_tokens,
        )

    def _check_limits(
        self,
        dialogue: Dialogue,
        plan: TurnPlan | None,
        control: Control,
        deadline: float | None,
    ) -> Stop | None:
        """Return why no further call may start (a Stop whose reason is None means pause)."""
        if plan is None:
            return Stop(StopReason.MAX_ROUNDS, counted(dialogue.limits.max_rounds, "round"))
        if control.stop_requested:
            return Stop(control.reason, control.detail)
        if control.pause_requested:
            return Stop(None)
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            return Stop(StopReason.TIME, f"{dialogue.limits.max_seconds:g} s")
        return None

    @staticmethod
    def _check_tokens(dialogue: Dialogue, plan: TurnPlan, tokens_used: int) -> Stop | None:
        left = tokens_left(dialogue.limits, tokens_used)
        if left is None or plan.prompt_estimate + plan.max_tokens <= left:
            return None
        limit = dialogue.limits.max_total_tokens
        return Stop(StopReason.TOKENS, f"{tokens_used} of {limit} tokens used; the next call could pass it")

    def _lookout(self, dialogue: Dialogue) -> Lookout:
        """A look for circles under the dialogue's names, kept for the turns of one run."""
        return Lookout([p.name for p in dialogue.participants], self.tuning.loops)

    async def _notice_loops(
        self, dialogue: Dialogue, turns: Sequence[Turn], lookout: Lookout
    ) -> AsyncIterator[Event | Stop]:
        """Note each new sign of going in circles; pause or stop if the dialogue asks for it."""
        findings = lookout.notice(turns)
        for finding in findings:
            note = Note(dialogue.id, len(turns), finding.kind, finding.detail, self._clock())
            yield Noted(await self.store.add_note(note))
        if not findings:
            return
        if dialogue.loop_action is LoopAction.STOP:
            yield Stop(StopReason.CONVERGENCE, "; ".join(f.detail for f in findings))
        elif dialogue.loop_action is LoopAction.PAUSE:
            yield Stop(None)


def _calibration(
    dialogue: Dialogue,
    seat: int,
    turns: Sequence[Turn],
    window: Window,
    notes: Sequence[Note],
    prompts: Prompts,
) -> tuple[int, int] | None:
    """Return (prompt tokens, byte bound) of this seat's last answered call, to tighten the estimate.

    Only a call made under the same window counts: after a compaction the old prompt is no longer
    a prefix of the new one, and its count would say nothing about it.
    """
    for turn in reversed(turns):
        if turn.seq < window.since or turn.inherited:
            return None
        if turn.seat == seat and turn.status is TurnStatus.OK and turn.usage.prompt_tokens:
            size = prompts.size_at(seat, turn.seq, window)
            if size is None:  # asked before this run (a resumed dialogue): built again
                earlier = turns[: turn.seq]
                size = prompts.build(
                    dialogue.participants, seat, dialogue.opening, earlier, window, notes
                ).size
            return turn.usage.prompt_tokens, size
    return None


def _budget_detail(plan: TurnPlan, worst: Decimal, budget: Budget, held: Decimal) -> str:
    verdict = f", and the referee's verdict up to {format_usd(held)}" if held else ""
    return (
        f"{plan.persona.name}'s next call could cost up to {format_usd(worst)}{verdict}; "
        f"{format_usd(budget.remaining)} of {format_usd(budget.limit)} left"
    )


def _draft(spec: DialogueSpec, now: datetime) -> Dialogue:
    """Return the dialogue a spec will make, before it is stored: what the referee's reserve reads."""
    return Dialogue(
        id=0,
        participants=spec.participants,
        opening=spec.opening,
        limits=spec.limits,
        status=Status.PENDING,
        created_at=now,
        referee=spec.referee,
        referee_every=spec.referee_every,
    )
