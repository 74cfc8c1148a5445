"""The dialogue engine: who speaks next, what it costs at most, streaming each reply, and when to stop.

`DialogueRunner.run` is an async iterator of events that any front end (terminal, Discord) renders.
Every turn is committed before the next one starts, so `run` on the same id resumes after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from bot.budget import (
    Budget,
    Reservation,
    cache_saving,
    count_bytes,
    estimate_prompt_tokens,
    expected_tokens,
    format_usd,
    settle_cost,
    worst_case_cost,
)
from bot.call import Attempt, stream_call, wait_or_stop
from bot.control import Control
from bot.errors import InputError, ProviderError, StateError
from bot.events import Ended, Event, Noted, Started, TurnFinished, TurnRestarted, TurnStarted
from bot.loops import LoopThresholds, notice
from bot.models import (
    ContextPolicy,
    Dialogue,
    DialogueSpec,
    LoopAction,
    ModelInfo,
    Note,
    NoteKind,
    Persona,
    StopReason,
    Turn,
    TurnStatus,
    Usage,
)
from bot.prompts import Window, build_messages, cache_breakpoints, current_window
from bot.providers import Router
from bot.providers.base import ChatRequest
from bot.retry import RetryPolicy
from bot.store import Store

log = logging.getLogger(__name__)

MAX_PARTICIPANTS = 8
# An empty reply is retried once with this much more room, since reasoning usually ate it all.
EMPTY_RETRY_FACTOR = 2


@dataclass(frozen=True, slots=True)
class Tuning:
    """How long dialogues are kept cheap and going; the values come from the settings."""

    #: Model id prefixes that cache only at explicit breakpoints; others cache on their own.
    cache_breakpoint_models: tuple[str, ...] = ("anthropic/", "google/gemini")
    #: Turns a compaction keeps verbatim (fewer only when the context leaves no room for them).
    keep_recent: int = 4
    #: Room for a compaction's summary.
    summary_max_tokens: int = 600
    loops: LoopThresholds = field(default_factory=LoopThresholds)


# Validation ------------------------------------------------------------------------------------


def validate_spec(spec: DialogueSpec, max_rounds: int, max_budget: Decimal) -> None:
    """Raise InputError, naming the problem and the fix, for a spec that cannot run."""
    limits = spec.limits
    if not 2 <= len(spec.participants) <= MAX_PARTICIPANTS:
        raise InputError(
            f"a dialogue needs 2 to {MAX_PARTICIPANTS} participants, not {len(spec.participants)}"
        )
    if not spec.opening.strip():
        raise InputError("the opening message is empty; give the first speaker something to answer")
    if not 1 <= limits.max_rounds <= max_rounds:
        raise InputError(
            f"rounds must be between 1 and {max_rounds} (VOICES_MAX_ROUNDS), not {limits.max_rounds}"
        )
    if not Decimal(0) < limits.budget_usd <= max_budget:
        raise InputError(
            f"budget must be above $0 and at most ${max_budget} (VOICES_MAX_BUDGET), not ${limits.budget_usd}"
        )
    if limits.max_total_tokens is not None and limits.max_total_tokens < 1:
        raise InputError("the token limit must be at least 1")
    if limits.max_seconds is not None and limits.max_seconds <= 0:
        raise InputError("the time limit must be above 0 seconds")
    for persona in spec.participants:
        if persona.max_tokens is not None and persona.max_tokens < 16:
            raise InputError(f"{persona.name}: max_tokens must be at least 16 (some providers refuse less)")


# The runner ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stop:
    """Why the run ends; no reason means a pause."""

    reason: StopReason | None
    detail: str | None = None


@dataclass(slots=True)
class _TurnPlan:
    seq: int
    round: int
    seat: int
    persona: Persona
    model: ModelInfo
    messages: list[dict[str, str]]
    max_tokens: int
    prompt_estimate: int
    window: Window = field(default_factory=Window)
    #: Prompt tokens per byte of the bound, as the dialogue's latest call showed (1.0 before any).
    tokens_per_byte: float = 1.0
    started_at: datetime | None = None

    def expected(self, messages: Sequence[dict[str, str]]) -> int:
        """Return the prompt tokens messages are expected to make (for fitting, not for money)."""
        return expected_tokens(messages, self.tokens_per_byte)

    def overflow(self) -> str | None:
        """Say how the request would pass the model's context, or return None when it fits."""
        context = self.model.context_length
        expected = min(self.prompt_estimate, self.expected(self.messages))
        if context is None or expected + self.max_tokens <= context:
            return None
        return (
            f"{self.persona.name}: about {expected} prompt tokens + {self.max_tokens} for "
            f"the reply exceed {self.model.id}'s {context}"
        )


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
        self.tuning = tuning or Tuning()
        # Dialogues running in this process: a second run of one would write every turn twice.
        self._active: set[int] = set()

    async def create(self, spec: DialogueSpec) -> Dialogue:
        """Validate the spec against the limits and the catalogue, then store it as pending."""
        await self.check(spec)
        return await self.store.create_dialogue(spec, self._clock())

    async def check(self, spec: DialogueSpec) -> Decimal:
        """Raise InputError for a spec that cannot run; return the first call's worst-case cost."""
        validate_spec(spec, self._max_rounds, self._max_budget)
        first = spec.participants[0]
        model = await self.router.model(first)
        for persona in spec.participants[1:]:
            await self.router.model(persona)
        if spec.summary_model is not None:
            await self.router.model(_summariser(spec.summary_model, spec.participants[0], 16))
        messages = build_messages(spec.participants, 0, spec.opening, [])
        worst = worst_case_cost(model.pricing, estimate_prompt_tokens(messages), _max_tokens(first, model))
        if worst > spec.limits.budget_usd:
            raise InputError(
                f"budget ${spec.limits.budget_usd} is below the worst case of the first call "
                f"(${worst:.6f}); raise the budget or lower max_tokens"
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
                f"a dialogue can have at most {self._max_rounds} rounds; it has {dialogue.limits.max_rounds}"
            )
        await self.store.extend_rounds(dialogue_id, total, reopen)
        return await self.store.get_dialogue(dialogue_id)

    async def run(self, dialogue_id: int, control: Control | None = None) -> AsyncIterator[Event]:
        """Run (or resume) the dialogue until a limit, a stop, a pause or an error; yield what happens."""
        if dialogue_id in self._active:
            raise StateError(f"dialogue {dialogue_id} is already running")
        self._active.add(dialogue_id)
        try:
            async for event in self._run(dialogue_id, control or Control()):
                yield event
        finally:
            self._active.discard(dialogue_id)

    async def _run(self, dialogue_id: int, control: Control) -> AsyncIterator[Event]:
        dialogue = await self.store.get_dialogue(dialogue_id)
        if dialogue.status.is_final:
            reason = dialogue.stop_reason.describe if dialogue.stop_reason else dialogue.status
            raise StateError(f"dialogue {dialogue_id} has ended ({reason}); start a new one")
        models = [await self.router.model(p) for p in dialogue.participants]
        await self.store.settle_interrupted_calls(dialogue_id)
        await self.store.mark_running(dialogue_id, self._clock())
        dialogue = await self.store.get_dialogue(dialogue_id)
        yield Started(dialogue)

        stop: _Stop | None = None
        try:
            async for event in self._turns(dialogue, models, control):
                if isinstance(event, _Stop):
                    stop = event
                else:
                    yield event
        except ProviderError as exc:
            stop = _Stop(StopReason.PROVIDER_ERROR, str(exc))
        except StateError:
            raise  # another process owns the dialogue; its state is not ours to change
        except Exception as exc:
            log.exception("dialogue %s failed", dialogue_id)
            stop = _Stop(StopReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        if stop is None or stop.reason is None:
            await self.store.mark_paused(dialogue_id)
        else:
            await self.store.finish_dialogue(dialogue_id, stop.reason, stop.detail, self._clock())
        yield Ended(await self.store.get_dialogue(dialogue_id))

    async def _turns(
        self, dialogue: Dialogue, models: list[ModelInfo], control: Control
    ) -> AsyncIterator[Event | _Stop]:
        """Yield events turn after turn, then one _Stop; return without one to pause."""
        turns = await self.store.list_turns(dialogue.id)
        notes = await self.store.list_notes(dialogue.id)
        totals = dialogue.totals
        budget = Budget(dialogue.limits.budget_usd, totals.spent_usd)
        loop = asyncio.get_running_loop()
        deadline = None
        if dialogue.limits.max_seconds is not None:
            # The limit counts the time spent on calls, so a pause or a crash does not use it up.
            used = sum(t.latency_ms for t in turns) / 1000
            deadline = loop.time() + dialogue.limits.max_seconds - used
        while True:
            plan = self._plan(dialogue, models, turns, notes)
            if limit := self._check_limits(dialogue, plan, control, deadline):
                if limit.reason is not None:
                    yield limit
                return
            assert plan is not None
            if (overflow := plan.overflow()) is not None:
                if dialogue.context_policy is ContextPolicy.STOP:
                    yield _Stop(StopReason.CONTEXT_LIMIT, overflow)
                    return
                stop: _Stop | None = None
                async for step in self._make_room(dialogue, plan, turns, budget, control, deadline):
                    if isinstance(step, _Stop):
                        stop = step
                    else:
                        if isinstance(step, Noted):
                            notes.append(step.note)
                        yield step
                if stop is not None:
                    yield stop
                    return
                dialogue = await self.store.get_dialogue(dialogue.id)
                totals = dialogue.totals
                continue
            if limit := self._check_tokens(dialogue, plan, totals.total_tokens):
                yield limit
                return
            worst = worst_case_cost(plan.model.pricing, plan.prompt_estimate, plan.max_tokens)
            reservation = budget.reserve(worst)
            if reservation is None:
                yield _Stop(StopReason.BUDGET, _budget_detail(plan, worst, budget))
                return
            yield TurnStarted(plan.seq, plan.round, plan.seat, plan.persona, worst)
            turn: Turn | None = None
            stop = None
            async for item in self._play_turn(dialogue, plan, reservation, budget, control, deadline):
                if isinstance(item, Turn):
                    turn = item
                elif isinstance(item, _Stop):
                    stop = item
                else:
                    yield item
            # Read the dialogue again: its totals moved, and its round limit may have been extended.
            dialogue = await self.store.get_dialogue(dialogue.id)
            totals = dialogue.totals
            if turn is not None:
                turns.append(turn)
                yield TurnFinished(turn, totals.spent_usd)
                if stop is None and turn.status is TurnStatus.OK:
                    async for found in self._notice_loops(dialogue, turns):
                        if isinstance(found, _Stop):
                            stop = found
                        else:
                            yield found
            if stop is not None:
                if stop.reason is not None:
                    yield stop
                return

    def _plan(
        self, dialogue: Dialogue, models: list[ModelInfo], turns: Sequence[Turn], notes: Sequence[Note]
    ) -> _TurnPlan | None:
        seq = len(turns)
        count = len(dialogue.participants)
        round_no, seat = divmod(seq, count)
        if round_no >= dialogue.limits.max_rounds:
            return None
        persona, model = dialogue.participants[seat], models[seat]
        window = current_window(notes)
        messages = build_messages(dialogue.participants, seat, dialogue.opening, turns, window)
        estimate = estimate_prompt_tokens(messages, _calibration(dialogue, seat, turns, notes))
        return _TurnPlan(
            seq,
            round_no + 1,
            seat,
            persona,
            model,
            messages,
            _max_tokens(persona, model),
            estimate,
            window,
            _tokens_per_byte(dialogue, turns, notes),
        )

    def _check_limits(
        self,
        dialogue: Dialogue,
        plan: _TurnPlan | None,
        control: Control,
        deadline: float | None,
    ) -> _Stop | None:
        """Return why no further call may start (a _Stop whose reason is None means pause)."""
        if plan is None:
            return _Stop(StopReason.MAX_ROUNDS, f"{dialogue.limits.max_rounds} rounds")
        if control.stop_requested:
            return _Stop(control.reason, control.detail)
        if control.pause_requested:
            return _Stop(None)
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            return _Stop(StopReason.TIME, f"{dialogue.limits.max_seconds:g} s")
        return None

    @staticmethod
    def _check_tokens(dialogue: Dialogue, plan: _TurnPlan, tokens_used: int) -> _Stop | None:
        limit = dialogue.limits.max_total_tokens
        if limit is not None and tokens_used + plan.prompt_estimate + plan.max_tokens > limit:
            return _Stop(
                StopReason.TOKENS,
                f"{tokens_used} of {limit} tokens used; the next call could pass it",
            )
        return None

    async def _play_turn(
        self,
        dialogue: Dialogue,
        plan: _TurnPlan,
        reservation: Reservation,
        budget: Budget,
        control: Control,
        deadline: float | None,
    ) -> AsyncIterator[Event | Turn | _Stop]:
        """Stream one turn with its retries and commit it; yield its events, the Turn, maybe a _Stop.

        Network failures are retried on the same reservation (an error is not billed). An empty
        reply is billed, then retried once with more room under a new reservation.
        """
        plan.started_at = self._clock()
        await self.store.begin_call(dialogue.id, plan.seq, reservation.amount, plan.started_at)
        bill = _Bill()
        attempts, seconds, max_tokens, empty_retried = 0, 0.0, plan.max_tokens, False
        stop: _Stop | None = None
        while True:
            attempts += 1
            attempt = Attempt()
            provider = self.router.route(plan.persona).provider
            request = self._request(dialogue, plan, max_tokens)
            async for delta in stream_call(provider, request, plan.seq, attempt, control, deadline):
                yield delta
            seconds += attempt.seconds
            if attempt.error is not None:
                delay = self._retry.delay(attempt.error, attempts)
                if delay is not None:
                    yield TurnRestarted(plan.seq, attempts + 1, str(attempt.error), delay)
                    if not await wait_or_stop(self._sleep, delay, control):
                        continue
                    attempt.interrupted = control.reason
                elif not empty_retried:
                    budget.release(reservation)
                    await self.store.cancel_call(dialogue.id, plan.seq)
                    yield _Stop(StopReason.PROVIDER_ERROR, str(attempt.error))
                    return
                else:  # the empty first reply was billed: keep it on record
                    budget.release(reservation)
                    status, stop = (
                        TurnStatus.EMPTY,
                        _Stop(StopReason.PROVIDER_ERROR, str(attempt.error)),
                    )
                    break
            if attempt.interrupted is not None:
                # A cancelled stream reports no cost; charge the worst case so the cap still holds.
                budget.settle(reservation, reservation.amount)
                bill.add(Usage(), reservation.amount, "reserved")
                status, stop = (
                    TurnStatus.CANCELLED,
                    _Stop(attempt.interrupted, control.detail or "the reply was cut off"),
                )
                break
            completion = attempt.completion
            assert completion is not None
            cost, source = settle_cost(completion.usage or Usage(), plan.model.pricing)
            budget.settle(reservation, cost)
            bill.add(completion.usage or Usage(), cost, source)
            if "".join(attempt.text).strip():
                status = TurnStatus.OK
                break
            bigger = _grow(max_tokens, plan)
            retry = (
                None
                if empty_retried
                else budget.reserve(worst_case_cost(plan.model.pricing, plan.prompt_estimate, bigger))
            )
            if retry is None:
                detail = (
                    f"{plan.persona.name} replied with no text (finish_reason={completion.finish_reason})"
                )
                if not empty_retried:
                    detail += "; the budget left no room to retry"
                status, stop = TurnStatus.EMPTY, _Stop(StopReason.EMPTY_REPLY, detail)
                break
            reservation, max_tokens, empty_retried = retry, bigger, True
            # The first reply is billed but not yet committed: the in-flight record covers both.
            await self.store.begin_call(dialogue.id, plan.seq, bill.cost + retry.amount, self._clock())
            yield TurnRestarted(plan.seq, attempts + 1, "the reply was empty", 0.0)
        turn = self._turn(dialogue, plan, status, attempt, bill, attempts, seconds)
        await self.store.add_turn(turn)
        yield turn
        if stop is not None:
            yield stop

    # Long dialogues ---------------------------------------------------------------------------

    async def _make_room(
        self,
        dialogue: Dialogue,
        plan: _TurnPlan,
        turns: Sequence[Turn],
        budget: Budget,
        control: Control,
        deadline: float | None,
    ) -> AsyncIterator[Event | _Stop]:
        """The next request will not fit: drop or summarise the oldest turns, per the dialogue's policy.

        Yields the stored note's event (the window follows from the notes), or a _Stop when no
        window can fit: at least the last turn is always kept, so the speaker has something to answer.
        """
        overflow = plan.overflow()
        window = plan.window
        last = len(turns) - 1
        if dialogue.context_policy is ContextPolicy.TRUNCATE:
            first = next(
                (k for k in range(window.first_kept + 1, last + 1) if self._fits(dialogue, plan, turns, k)),
                None,
            )
            if first is None:
                yield _Stop(StopReason.CONTEXT_LIMIT, f"{overflow}, even with only the last turn kept")
                return
            note = Note(
                dialogue.id,
                plan.seq,
                NoteKind.TRUNCATED,
                f"{_first_turns(first)} left out to fit {plan.model.id}'s context; the opening stays.",
                self._clock(),
                first_kept_seq=first,
            )
            yield Noted(await self.store.add_note(note))
            return
        # Compact: keep a recent window verbatim (smaller only if it must be) and summarise the rest.
        # The summary takes at most half of what the reply leaves of the context.
        context = plan.model.context_length or 0
        room = max(16, min(self.tuning.summary_max_tokens, (context - plan.max_tokens) // 2))
        keep = min(self.tuning.keep_recent, last)
        start = max(len(turns) - keep, window.first_kept + 1)
        upto = next((k for k in range(start, last + 1) if self._fits(dialogue, plan, turns, k, room)), None)
        if upto is None or upto <= window.first_kept:
            yield _Stop(StopReason.CONTEXT_LIMIT, f"{overflow}, even with the history summarised")
            return
        async for item in self._summarise(
            dialogue, plan, turns, window, upto, room, budget, control, deadline
        ):
            yield item

    @staticmethod
    def _fits(
        dialogue: Dialogue, plan: _TurnPlan, turns: Sequence[Turn], first_kept: int, extra: int = 0
    ) -> bool:
        """Return whether the speaker's request fits its context with turns from `first_kept` on
        (and `extra` tokens of summary)."""
        context = plan.model.context_length
        assert context is not None
        placeholder = Window(first_kept, "" if extra else None, plan.seq)
        messages = build_messages(dialogue.participants, plan.seat, dialogue.opening, turns, placeholder)
        return plan.expected(messages) + extra + plan.max_tokens <= context

    async def _summarise(
        self,
        dialogue: Dialogue,
        plan: _TurnPlan,
        turns: Sequence[Turn],
        window: Window,
        upto: int,
        room: int,
        budget: Budget,
        control: Control,
        deadline: float | None,
    ) -> AsyncIterator[Event | _Stop]:
        """Summarise turns before `upto` (with the previous summary, in at most `room` tokens) into a
        compaction note.

        The summary's call is budgeted like a turn: reserved at its worst case first, recorded as in
        flight (under the next turn's number) so a crash charges it, and settled into the totals
        with the note in one transaction.
        """
        persona = _summariser(dialogue.summary_model or plan.persona.model, plan.persona, room)
        model = await self.router.model(persona)
        max_tokens = _max_tokens(persona, model)
        context = model.context_length
        words = max(50, max_tokens * 3 // 5)
        messages = _summary_messages(dialogue, turns[window.first_kept : upto], window.summary, words)
        # The summariser must hold what it reads: with a small context it reads fewer turns.
        while context is not None and plan.expected(messages) + max_tokens > context:
            if upto - 1 <= window.first_kept:
                yield _Stop(StopReason.CONTEXT_LIMIT, f"{model.id} cannot hold a single turn to summarise")
                return
            upto -= 1
            messages = _summary_messages(dialogue, turns[window.first_kept : upto], window.summary, words)
        worst = worst_case_cost(model.pricing, estimate_prompt_tokens(messages), max_tokens)
        reservation = budget.reserve(worst)
        if reservation is None:
            yield _Stop(
                StopReason.BUDGET,
                f"compacting the history could cost up to {format_usd(worst)}; "
                f"{format_usd(budget.remaining)} of {format_usd(budget.limit)} left",
            )
            return
        await self.store.begin_call(dialogue.id, plan.seq, worst, self._clock())
        provider = self.router.route(persona).provider
        request = ChatRequest(model=model.id, messages=messages, max_tokens=max_tokens)
        attempts = 0
        while True:
            attempts += 1
            attempt = Attempt()
            async for _ in stream_call(provider, request, plan.seq, attempt, control, deadline):
                pass  # the summary is shown whole, once it is kept
            if attempt.error is None or attempt.interrupted is not None:
                break
            delay = self._retry.delay(attempt.error, attempts)
            stopped = delay is not None and await wait_or_stop(self._sleep, delay, control)
            if delay is None or stopped:
                budget.release(reservation)
                await self.store.cancel_call(dialogue.id, plan.seq)
                if stopped:
                    yield _Stop(control.reason, control.detail)
                else:
                    yield _Stop(StopReason.PROVIDER_ERROR, f"the summary call failed: {attempt.error}")
                return
        if attempt.interrupted is not None:
            budget.settle(reservation, reservation.amount)
            await self.store.settle_interrupted_calls(dialogue.id)
            yield _Stop(attempt.interrupted, control.detail or "stopped while summarising")
            return
        completion = attempt.completion
        assert completion is not None
        usage = completion.usage or Usage()
        cost, _source = settle_cost(usage, model.pricing)
        budget.settle(reservation, cost)
        summary = "".join(attempt.text).strip()
        kind, text = NoteKind.COMPACTED, summary
        if not summary:  # paid for but empty: fall back to leaving the turns out
            kind = NoteKind.TRUNCATED
            text = f"The summary came back empty, so {_first_turns(upto).lower()} left out instead."
        note = Note(
            dialogue.id,
            plan.seq,
            kind,
            text,
            self._clock(),
            first_kept_seq=upto,
            model=completion.model,
            usage=usage,
            cost_usd=cost,
        )
        yield Noted(await self.store.add_note(note, settles_seq=plan.seq))

    async def _notice_loops(self, dialogue: Dialogue, turns: Sequence[Turn]) -> AsyncIterator[Event | _Stop]:
        """Note each new sign of going in circles; pause or stop if the dialogue asks for it."""
        names = [p.name for p in dialogue.participants]
        findings = notice(turns, names, self.tuning.loops)
        for finding in findings:
            note = Note(dialogue.id, len(turns), finding.kind, finding.detail, self._clock())
            yield Noted(await self.store.add_note(note))
        if not findings:
            return
        if dialogue.loop_action is LoopAction.STOP:
            yield _Stop(StopReason.CONVERGENCE, "; ".join(f.detail for f in findings))
        elif dialogue.loop_action is LoopAction.PAUSE:
            yield _Stop(None)

    def _request(self, dialogue: Dialogue, plan: _TurnPlan, max_tokens: int) -> ChatRequest:
        return ChatRequest(
            model=plan.model.id,
            messages=plan.messages,
            max_tokens=max_tokens,
            temperature=plan.persona.temperature,
            reasoning_effort=plan.persona.reasoning_effort,
            # One session per speaker keeps its calls on one provider, which helps prompt caching.
            session_id=f"voices-{dialogue.id}-{plan.seat}",
            chat_format=plan.persona.chat_format,
            speaker=plan.persona.name,
            others=tuple(p.name for seat, p in enumerate(dialogue.participants) if seat != plan.seat),
            cache_breakpoints=self._breakpoints(plan.model.id, plan.messages),
        )

    def _breakpoints(self, model_id: str, messages: list[dict[str, str]]) -> tuple[int, ...]:
        if not model_id.startswith(self.tuning.cache_breakpoint_models):
            return ()  # models that cache on their own need only the sticky session_id
        return cache_breakpoints(messages)

    def _turn(
        self,
        dialogue: Dialogue,
        plan: _TurnPlan,
        status: TurnStatus,
        attempt: Attempt,
        bill: _Bill,
        attempts: int,
        seconds: float,
    ) -> Turn:
        completion = attempt.completion
        assert plan.started_at is not None
        return Turn(
            dialogue_id=dialogue.id,
            seq=plan.seq,
            round=plan.round,
            seat=plan.seat,
            speaker=plan.persona.name,
            status=status,
            text="".join(attempt.text),
            reasoning="".join(attempt.reasoning),
            usage=bill.usage,
            cost_usd=bill.cost,
            cost_source=bill.source,
            model_used=completion.model if completion else plan.model.id,
            finish_reason=completion.finish_reason if completion else None,
            latency_ms=round(seconds * 1000),
            attempts=attempts,
            started_at=plan.started_at,
            ended_at=self._clock(),
            generation_id=completion.generation_id if completion else None,
            provider=completion.provider if completion else None,
            cache_saving_usd=cache_saving(bill.usage, plan.model.pricing),
        )


@dataclass(slots=True)
class _Bill:
    """What a turn's calls cost together, and the least certain source of that figure."""

    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    source: str = "reported"

    def add(self, usage: Usage, cost: Decimal, source: str) -> None:
        self.usage = self.usage + Usage(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.reasoning_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        self.cost += cost
        order = ("reported", "computed", "reserved")
        self.source = max(self.source, source, key=order.index)


def _max_tokens(persona: Persona, model: ModelInfo) -> int:
    wanted = persona.max_tokens or 1024
    return min(wanted, model.max_completion_tokens) if model.max_completion_tokens else wanted


def _grow(max_tokens: int, plan: _TurnPlan) -> int:
    """Return the room for an empty reply's retry: twice as much, within the model's limits."""
    bigger = max_tokens * EMPTY_RETRY_FACTOR
    if plan.model.max_completion_tokens:
        bigger = min(bigger, plan.model.max_completion_tokens)
    if plan.model.context_length:
        bigger = min(bigger, plan.model.context_length - plan.prompt_estimate)
    return max(bigger, max_tokens)


def _calibration(
    dialogue: Dialogue, seat: int, turns: Sequence[Turn], notes: Sequence[Note]
) -> tuple[int, int] | None:
    """Return (prompt tokens, byte bound) of this seat's last answered call, to tighten the estimate.

    Only a call made under the same window counts: after a compaction the old prompt is no longer
    a prefix of the new one, and its count would say nothing about it.
    """
    window = current_window(notes)
    for turn in reversed(turns):
        if turn.seq < window.since:
            return None
        if turn.seat == seat and turn.status is TurnStatus.OK and turn.usage.prompt_tokens:
            earlier = build_messages(dialogue.participants, seat, dialogue.opening, turns[: turn.seq], window)
            return turn.usage.prompt_tokens, count_bytes(earlier)
    return None


def _tokens_per_byte(dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note]) -> float:
    """Return prompt tokens per byte of the bound on the latest answered call (1.0 before any)."""
    for turn in reversed(turns):
        if turn.status is TurnStatus.OK and turn.usage.prompt_tokens and turn.attempts == 1:
            window = current_window(notes, at=turn.seq)
            sent = build_messages(
                dialogue.participants, turn.seat, dialogue.opening, turns[: turn.seq], window
            )
            return min(1.0, turn.usage.prompt_tokens / count_bytes(sent))
    return 1.0


def _first_turns(count: int) -> str:
    return "Turn 1 is" if count == 1 else f"Turns 1–{count} are"


def _summariser(model: str, speaker: Persona, max_tokens: int) -> Persona:
    """Return the persona that writes a compaction's summary: the configured model, or the speaker's."""
    if model == speaker.model:
        return replace(
            speaker, name="Summary", max_tokens=max_tokens, system_prompt="", reasoning_effort=None
        )
    return Persona(name="Summary", model=model, max_tokens=max_tokens)


def _summary_messages(
    dialogue: Dialogue, turns: Sequence[Turn], previous: str | None, words: int
) -> list[dict[str, str]]:
    names = " and ".join(p.name for p in dialogue.participants)
    lines = [f"{t.speaker}: {t.text}" for t in turns if t.status is TurnStatus.OK]
    earlier = f"What came before, in summary:\n{previous}\n\n" if previous else ""
    return [
        {
            "role": "system",
            "content": (
                f"You keep the record of a conversation between {names}, which opened with: "
                f"{dialogue.opening!r}. Summarise the part below so that they can carry on from it: "
                "who said what, the positions and claims each holds, and the questions still open. "
                f"Plain prose in the third person, at most {words} words. Write only the summary."
            ),
        },
        {"role": "user", "content": earlier + "The conversation:\n\n" + "\n\n".join(lines)},
    ]


def _budget_detail(plan: _TurnPlan, worst: Decimal, budget: Budget) -> str:
    return (
        f"{plan.persona.name}'s next call could cost up to {format_usd(worst)}; "
        f"{format_usd(budget.remaining)} of {format_usd(budget.limit)} left"
    )
