"""One model's turn: its call streamed, retried when the network fails or the reply comes back
empty, billed (bot/billing.py says what), and committed with its bill's notes in one transaction.

The runner decides who speaks and when to stop; this plays the turn it was given.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from bot.billing import Bill, Charge, charge, charge_lost, count_usage
from bot.budget import Budget, Reservation, cache_saving, format_usd
from bot.call import Attempt, stream_call, wait_or_stop
from bot.control import Control
from bot.events import Event, Noted, TurnRestarted
from bot.models import Dialogue, Note, NoteKind, StopReason, Turn, TurnStatus, call_seed
from bot.plan import Stop, Tuning, TurnPlan, reserve_retry, tokens_left
from bot.prompts import cache_breakpoints
from bot.providers import Router
from bot.providers.base import ChatRequest
from bot.retry import RetryPolicy
from bot.store import Store

log = logging.getLogger(__name__)

# An empty reply is retried once with this much more room, since reasoning usually ate it all.
EMPTY_RETRY_FACTOR = 2


class TurnPlayer:
    """Play a model's turn: stream, retry, bill and commit it."""

    def __init__(
        self,
        store: Store,
        router: Router,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], datetime],
        tuning: Tuning,
    ):
        self.store = store
        self.router = router
        self._retry = retry
        self._sleep = sleep
        self._clock = clock
        self.tuning = tuning

    async def play(
        self,
        dialogue: Dialogue,
        plan: TurnPlan,
        reservation: Reservation,
        budget: Budget,
        control: Control,
        deadline: float | None,
    ) -> AsyncIterator[Event | Turn | Stop]:
        """Stream one turn with its retries and commit it; yield its events, the Turn, maybe a Stop.

        A call that fails before the provider takes it is retried on the same reservation (nothing
        was billed); one that fails after is charged as a cut-off call is, and retried under a new
        reservation. An empty reply is billed, then retried once with more room under a new one.
        """
        plan.started_at = self._clock()
        await self.store.begin_call(dialogue.id, plan.seq, reservation.amount, plan.started_at)
        bill = Bill()
        attempts, seconds, max_tokens, empty_retried = 0, 0.0, plan.max_tokens, False
        #: Some attempt was charged: the turn is kept on record, whatever comes of the rest.
        billed = False
        #: Tokens the turn's charged tries used, where known; a try cut off before any words at
        #: least had its prompt read. A retry must fit beside them under the dialogue's token limit.
        used = 0
        stop: Stop | None = None
        while True:
            attempts += 1
            attempt = Attempt()
            provider = self.router.route(plan.persona).provider
            request = self._request(dialogue, plan, max_tokens)
            noted = False
            async for delta in stream_call(provider, request, plan.seq, attempt, control, deadline):
                if attempt.generation_id and not noted:
                    # Kept at once: should this process die now, the call's cost can still be asked.
                    await self.store.note_generation(dialogue.id, plan.seq, attempt.generation_id)
                    noted = True
                yield delta
            seconds += attempt.seconds
            if attempt.error is not None:
                delay = self._retry.delay(attempt.error, attempts)
                detail = str(attempt.error)
                retry: Reservation | None = reservation
                if attempt.taken:
                    # The provider took the call before it failed, and bills what it wrote (all of
                    # it, where it cannot cancel): charged as a cut-off call is, so the cap holds,
                    # and its tokens count toward the dialogue's limit as its cost does.
                    charged = await self._charge(provider, plan, request, attempt, reservation.amount)
                    used += charged.usage.total_tokens or plan.prompt_estimate
                    budget.settle(reservation, charged.cost)
                    bill.add(charged, reservation.amount)
                    bill.problems.append(
                        f"attempt {attempts} failed after the provider took it ({attempt.error}); "
                        f"charged {format_usd(charged.cost)} ({charged.source})"
                    )
                    billed = True
                    retry = None
                if delay is not None and retry is None:
                    retry, why = self._reserve_retry(dialogue, plan, used, budget, max_tokens)
                    if retry is None:
                        delay, detail = None, f"{detail}; {why}"
                reason = StopReason.PROVIDER_ERROR
                if delay is not None and retry is not None:
                    yield TurnRestarted(
                        plan.seq, attempts + 1, str(attempt.error), delay, type(attempt.error).__name__
                    )
                    if not await wait_or_stop(self._sleep, delay, control):
                        if retry is not reservation:
                            # What is billed is not yet committed: the in-flight record keeps it
                            # beside the retry's reservation. (Until now it held the failed try's,
                            # whose cost a crash in the wait would ask its provider for.)
                            now = self._clock()
                            await self.store.begin_call(dialogue.id, plan.seq, retry.amount, now, bill.cost)
                        reservation = retry
                        continue
                    reason, detail = control.reason, control.detail or "stopped while waiting to try again"
                if retry is not None:
                    budget.release(retry)
                if not billed:  # nothing was charged: there is no turn to keep
                    await self.store.cancel_call(dialogue.id, plan.seq)
                    yield Stop(reason, detail)
                    return
                # Billed (a reply that came back empty, or one the provider took before it failed):
                # the turn is kept on record, with what it cost.
                cut = bool("".join(attempt.text).strip()) or not empty_retried
                status, stop = (TurnStatus.CANCELLED if cut else TurnStatus.EMPTY), Stop(reason, detail)
                break
            charged = await self._charge(provider, plan, request, attempt, reservation.amount)
            billed = True
            used += charged.usage.total_tokens or plan.prompt_estimate
            budget.settle(reservation, charged.cost)
            bill.add(charged, reservation.amount)
            if attempt.interrupted is not None:
                status, stop = (
                    TurnStatus.CANCELLED,
                    Stop(attempt.interrupted, attempt.detail or control.detail or "the reply was cut off"),
                )
                break
            if "".join(attempt.text).strip():
                status = TurnStatus.OK
                break
            bigger = _grow(max_tokens, plan)
            retry, why = None, ""  # one retry with more room, no more
            if not empty_retried:
                retry, why = self._reserve_retry(dialogue, plan, used, budget, bigger)
            if retry is None:
                finish = attempt.completion.finish_reason if attempt.completion else None
                detail = f"{plan.persona.name} replied with no text (finish_reason={finish})"
                if why:
                    detail += f"; {why}"
                status, stop = TurnStatus.EMPTY, Stop(StopReason.EMPTY_REPLY, detail)
                break
            reservation, max_tokens, empty_retried = retry, bigger, True
            # The first reply is billed but not yet committed: the in-flight record covers both.
            await self.store.begin_call(dialogue.id, plan.seq, retry.amount, self._clock(), bill.cost)
            yield TurnRestarted(plan.seq, attempts + 1, "the reply was empty", 0.0)
        turn = self._turn(dialogue, plan, status, attempt, bill, attempts, seconds)
        # Only a server that answered without usage earns the note: a cut-off call's tokens are
        # counted too, but its bill came from the provider or its reservation, not from a count.
        problems = list(bill.problems)
        if bill.counted:
            problems += await self._unreported_note(dialogue, plan, bill.counted)
        notes = [Note(dialogue.id, plan.seq + 1, NoteKind.BILLING, p, self._clock()) for p in problems]
        stored = await self.store.add_turn(turn, notes)
        yield turn
        for note in stored:
            yield Noted(note)
        if bill.over is not None:
            # The provider billed above the prices Voices knew: learn the new ones before the next
            # reservation, and stop at once if the budget is spent.
            await self.router.refresh(plan.persona)
            # Overspending is the news, more than a reply that came back empty or failed with it.
            quiet = stop is None or stop.reason in (StopReason.EMPTY_REPLY, StopReason.PROVIDER_ERROR)
            if quiet and budget.remaining <= 0:
                stop = Stop(StopReason.BUDGET, _over_detail(bill.over, budget))
        if stop is not None:
            yield stop

    @staticmethod
    def _reserve_retry(
        dialogue: Dialogue, plan: TurnPlan, used: int, budget: Budget, max_tokens: int
    ) -> tuple[Reservation | None, str]:
        """Reserve another try of the turn, capped at `max_tokens`, beside the `used` tokens of the
        tries before it; or say what left no room for one."""
        left = tokens_left(dialogue.limits, plan.tokens_before + used)
        return reserve_retry(budget, plan.model.pricing, plan.prompt_estimate, max_tokens, left)

    async def _charge(
        self, provider: object, plan: TurnPlan, request: ChatRequest, attempt: Attempt, reserved: Decimal
    ) -> Charge:
        """Return what one attempt is charged: from its usage, or, when it has none it can be billed
        by (cut off, or a provider that reported none or nonsense), from the provider's record of the
        call, or else its reservation, so the cap still holds."""
        completion = attempt.completion
        if attempt.interrupted is not None or completion is None:
            lost = await charge_lost(provider, attempt.generation_id, reserved)
            reply = "".join(attempt.text) + "".join(attempt.reasoning)
            if not reply:
                return lost
            # Cut off: no usage came, but the text shown was generated; its tokens are counted
            # (marked ~) rather than shown as zero beside it.
            usage, _ = await count_usage(provider, request.messages, reply)
            return replace(lost, usage=usage)
        generation_id = completion.generation_id or attempt.generation_id
        if completion.usage is None:
            # Reported nothing (llama.cpp's server, for one): the provider's record of the call
            # where it keeps one, else the worst case; the tokens are counted here, marked ~.
            lost = await charge_lost(provider, generation_id, reserved)
            reply = "".join(attempt.text) + "".join(attempt.reasoning)
            usage, counted = await count_usage(provider, request.messages, reply)
            return replace(lost, usage=usage, source=lost.source if reserved else "computed", counted=counted)
        charged = charge(completion.usage, plan.model.pricing, reserved)
        if charged.source != "reserved":
            return charged
        lost = await charge_lost(provider, generation_id, reserved)
        return replace(lost, rejected=charged.rejected)

    async def _unreported_note(self, dialogue: Dialogue, plan: TurnPlan, counted: str) -> list[str]:
        """Say once per dialogue and speaker why its tokens carry a ~ and its cost is an upper bound."""
        opening = f"{plan.persona.name}'s server reports no token usage"
        if any(
            n.kind is NoteKind.BILLING and n.text.startswith(opening)
            for n in await self.store.list_notes(dialogue.id)
        ):
            return []
        if plan.model.pricing.is_free:
            return [f"{opening}: its tokens are counted {counted} and marked ~; it costs nothing"]
        return [
            f"{opening}: its tokens are counted {counted} and marked ~, and each of its calls is "
            "charged its worst case at the prices set for it, so the cost shown is an upper bound"
        ]

    def _request(self, dialogue: Dialogue, plan: TurnPlan, max_tokens: int) -> ChatRequest:
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
            cache_breakpoints=self._breakpoints(plan),
            seed=call_seed(dialogue.seed, plan.seq) if dialogue.seed is not None else None,
        )

    def _breakpoints(self, plan: TurnPlan) -> tuple[int, ...]:
        if plan.persona.provider is not None or self.router.route(plan.persona) is not self.router.default:
            return ()  # only OpenRouter takes cache_control parts; other servers may refuse them
        if not plan.model.id.startswith(self.tuning.cache_breakpoint_models):
            return ()  # models that cache on their own need only the sticky session_id
        return cache_breakpoints(plan.messages)

    def _turn(
        self,
        dialogue: Dialogue,
        plan: TurnPlan,
        status: TurnStatus,
        attempt: Attempt,
        bill: Bill,
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
            generation_id=completion.generation_id if completion else attempt.generation_id,
            provider=completion.provider if completion else None,
            cache_saving_usd=cache_saving(bill.usage, plan.model.pricing),
        )


def _grow(max_tokens: int, plan: TurnPlan) -> int:
    """Return the room for an empty reply's retry: twice as much, within the model's limits."""
    bigger = max_tokens * EMPTY_RETRY_FACTOR
    if plan.model.max_completion_tokens:
        bigger = min(bigger, plan.model.max_completion_tokens)
    if plan.model.context_length:
        bigger = min(bigger, plan.model.context_length - plan.prompt_estimate)
    return max(bigger, max_tokens)


def _over_detail(over: tuple[Decimal, Decimal], budget: Budget) -> str:
    billed, reserved = over
    return (
        f"the provider billed {format_usd(billed)} for a call whose worst case at its published prices "
        f"was {format_usd(reserved)}; {format_usd(budget.spent)} of {format_usd(budget.limit)} spent"
    )
