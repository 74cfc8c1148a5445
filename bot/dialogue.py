"""The dialogue engine: who speaks next, what it costs at most, streaming each reply, and when to stop.

`DialogueRunner.run` is an async iterator of events that any front end (terminal, Discord) renders.
Every turn is committed before the next one starts, so `run` on the same id resumes after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bot.budget import (
    Budget,
    Reservation,
    count_bytes,
    estimate_prompt_tokens,
    format_usd,
    settle_cost,
    worst_case_cost,
)
from bot.call import Attempt, stream_call, wait_or_stop
from bot.control import Control
from bot.errors import InputError, ProviderError, StateError
from bot.events import Ended, Event, Started, TurnFinished, TurnRestarted, TurnStarted
from bot.models import (
    Dialogue,
    DialogueSpec,
    ModelInfo,
    Persona,
    StopReason,
    Turn,
    TurnStatus,
    Usage,
)
from bot.prompts import build_messages
from bot.providers import Router
from bot.providers.base import ChatRequest
from bot.retry import RetryPolicy
from bot.store import Store

log = logging.getLogger(__name__)

MAX_PARTICIPANTS = 8
# An empty reply is retried once with this much more room, since reasoning usually ate it all.
EMPTY_RETRY_FACTOR = 2


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
    started_at: datetime | None = None


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
    ):
        self.store = store
        self.router = router
        self._clock = clock
        self._max_rounds = max_rounds
        self._max_budget = max_budget
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
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
        totals = dialogue.totals
        budget = Budget(dialogue.limits.budget_usd, totals.spent_usd)
        loop = asyncio.get_running_loop()
        deadline = None
        if dialogue.limits.max_seconds is not None:
            # The limit counts the time spent on calls, so a pause or a crash does not use it up.
            used = sum(t.latency_ms for t in turns) / 1000
            deadline = loop.time() + dialogue.limits.max_seconds - used
        while True:
            plan = self._plan(dialogue, models, turns)
            if limit := self._check_limits(dialogue, plan, control, deadline, totals.total_tokens):
                if limit.reason is not None:
                    yield limit
                return
            assert plan is not None
            worst = worst_case_cost(plan.model.pricing, plan.prompt_estimate, plan.max_tokens)
            reservation = budget.reserve(worst)
            if reservation is None:
                yield _Stop(StopReason.BUDGET, _budget_detail(plan, worst, budget))
                return
            yield TurnStarted(plan.seq, plan.round, plan.seat, plan.persona, worst)
            turn: Turn | None = None
            stop: _Stop | None = None
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
            if stop is not None:
                yield stop
                return

    def _plan(self, dialogue: Dialogue, models: list[ModelInfo], turns: Sequence[Turn]) -> _TurnPlan | None:
        seq = len(turns)
        count = len(dialogue.participants)
        round_no, seat = divmod(seq, count)
        if round_no >= dialogue.limits.max_rounds:
            return None
        persona, model = dialogue.participants[seat], models[seat]
        messages = build_messages(dialogue.participants, seat, dialogue.opening, turns)
        estimate = estimate_prompt_tokens(messages, _calibration(dialogue, seat, turns))
        return _TurnPlan(
            seq, round_no + 1, seat, persona, model, messages, _max_tokens(persona, model), estimate
        )

    def _check_limits(
        self,
        dialogue: Dialogue,
        plan: _TurnPlan | None,
        control: Control,
        deadline: float | None,
        tokens_used: int,
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
        context = plan.model.context_length
        if context is not None and plan.prompt_estimate + plan.max_tokens > context:
            return _Stop(
                StopReason.CONTEXT_LIMIT,
                f"{plan.persona.name}: about {plan.prompt_estimate} prompt tokens + "
                f"{plan.max_tokens} for the reply exceed {plan.model.id}'s {context}",
            )
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
        )

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
        )


@dataclass(slots=True)
class _Bill:
    """What a turn's calls cost together, and the least certain source of that figure."""

    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    source: str = "reported"

    def add(self, usage: Usage, cost: Decimal, source: str) -> None:
        self.usage = self.usage + Usage(usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens)
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


def _calibration(dialogue: Dialogue, seat: int, turns: Sequence[Turn]) -> tuple[int, int] | None:
    """Return (prompt tokens, byte bound) of this seat's last answered call, to tighten the estimate."""
    for turn in reversed(turns):
        if turn.seat == seat and turn.status is TurnStatus.OK and turn.usage.prompt_tokens:
            earlier = build_messages(dialogue.participants, seat, dialogue.opening, turns[: turn.seq])
            return turn.usage.prompt_tokens, count_bytes(earlier)
    return None


def _budget_detail(plan: _TurnPlan, worst: Decimal, budget: Budget) -> str:
    return (
        f"{plan.persona.name}'s next call could cost up to {format_usd(worst)}; "
        f"{format_usd(budget.remaining)} of {format_usd(budget.limit)} left"
    )
