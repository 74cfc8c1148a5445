"""Summaries of a stretch of dialogue, written by a model and paid for like a turn: what a compaction
keeps of the oldest turns, and what a continuation remembers of an earlier dialogue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from bot.billing import charge, charge_lost, count_usage
from bot.budget import Budget, Reservation, count_bytes, estimate_prompt_tokens, format_usd, worst_case_cost
from bot.call import Attempt, stream_call, wait_or_stop
from bot.control import Control
from bot.models import ModelInfo, Note, NoteKind, Persona, StopReason, Turn, TurnStatus, Usage
from bot.plan import Halted, max_tokens_of, reserve_retry
from bot.prompts import ChatMessage, interjections_by_turn
from bot.providers import Router
from bot.providers.base import ChatRequest
from bot.retry import RetryPolicy
from bot.store import Store


@dataclass(frozen=True, slots=True)
class Summary:
    """What a summary call wrote (maybe nothing), which model wrote it, and what it cost."""

    text: str
    model: str
    usage: Usage
    cost: Decimal


def summariser(model: str, speaker: Persona, max_tokens: int) -> Persona:
    """Return the persona that writes a summary: the configured model, or the speaker's own."""
    if model == speaker.model:
        return replace(
            speaker, name="Summary", max_tokens=max_tokens, system_prompt="", reasoning_effort=None
        )
    return Persona(name="Summary", model=model, max_tokens=max_tokens)


async def summary_writer(
    router: Router, model_id: str, speaker: Persona, room: int
) -> tuple[Persona, ModelInfo, int]:
    """Return who writes a summary in at most `room` tokens, its model, and the words to ask for."""
    persona = summariser(model_id, speaker, room)
    model = await router.model(persona)
    max_tokens = max_tokens_of(persona, model)
    return replace(persona, max_tokens=max_tokens), model, max(50, max_tokens * 3 // 5)


def summary_messages(
    participants: Sequence[Persona],
    opening: str,
    turns: Sequence[Turn],
    notes: Sequence[Note],
    previous: str | None,
    words: int,
) -> list[ChatMessage]:
    """Return the request that asks for a summary of these turns (and the interjections among them)."""
    names = " and ".join(p.name for p in participants)
    lines = conversation_lines(turns, notes)
    earlier = f"What came before, in summary:\n{previous}\n\n" if previous else ""
    return [
        {
            "role": "system",
            "content": (
                f"You keep the record of a conversation between {names}, which opened with: "
                f"{opening!r}. Summarise the part below so that they can carry on from it: "
                "who said what, the positions and claims each holds, and the questions still open. "
                f"Plain prose in the third person, at most {words} words. Write only the summary."
            ),
        },
        {"role": "user", "content": earlier + "The conversation:\n\n" + "\n\n".join(lines)},
    ]


def conversation_lines(turns: Sequence[Turn], notes: Sequence[Note]) -> list[str]:
    """Return the turns (and the interjections among them) as a reader outside the dialogue is
    shown them: one "Speaker: text" paragraph each, empty and cut-off replies left out."""
    said = interjections_by_turn(notes)
    lines = []
    for turn in turns:
        lines += said.get(turn.seq, [])
        if turn.status is TurnStatus.OK:
            lines.append(f"{turn.speaker}: {turn.text}")
    if turns:
        lines += said.get(turns[-1].seq + 1, [])
    return lines


class Summariser:
    """Make one summary call under a dialogue's budget, with the same care as a turn's call.

    It is reserved at its worst case first and recorded as in flight (under the number of the turn
    it comes before) so that a crash charges it; the caller settles it with the note that keeps it.
    """

    def __init__(
        self,
        store: Store,
        router: Router,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], datetime],
    ):
        self._store = store
        self._router = router
        self._retry = retry
        self._sleep = sleep
        self._clock = clock

    async def write(
        self,
        dialogue_id: int,
        seq: int,
        persona: Persona,
        model: ModelInfo,
        messages: list[ChatMessage],
        budget: Budget,
        control: Control,
        deadline: float | None,
        purpose: str,
        tokens_left: int | None = None,
    ) -> Summary:
        """Return the summary, or raise Halted (the budget, the token limit with `tokens_left`, the
        provider or a stop said no)."""
        max_tokens = persona.max_tokens or 512
        # Its tokens count toward the dialogue's limit as a turn's do, so it is held to it as one is.
        prompt = estimate_prompt_tokens(count_bytes(messages))
        if tokens_left is not None and prompt + max_tokens > tokens_left:
            raise Halted(
                StopReason.TOKENS,
                f"{purpose} could use {prompt + max_tokens:,} tokens; "
                f"{max(tokens_left, 0):,} are left under the limit",
            )
        worst = worst_case_cost(model.pricing, prompt, max_tokens)
        reservation = budget.reserve(worst)
        if reservation is None:
            raise Halted(
                StopReason.BUDGET,
                f"{purpose} could cost up to {format_usd(worst)}; "
                f"{format_usd(budget.remaining)} of {format_usd(budget.limit)} left",
            )
        await self._store.begin_call(dialogue_id, seq, worst, self._clock())
        provider = self._router.route(persona).provider
        request = ChatRequest(model=model.id, messages=messages, max_tokens=max_tokens)
        attempts, billed = 0, Decimal(0)
        #: What the failed tries the provider took wrote, counted (their tokens join the totals with
        #: their cost), and the tokens a retry must fit beside under the limit.
        written, used = Usage(), 0
        while True:
            attempts += 1
            attempt = Attempt()
            async for _ in stream_call(provider, request, seq, attempt, control, deadline):
                pass  # a summary is shown whole, once it is kept
            if attempt.error is None or attempt.interrupted is not None:
                break
            delay = self._retry.delay(attempt.error, attempts)
            detail = f"the summary call failed: {attempt.error}"
            retry: Reservation | None = reservation
            if attempt.taken:
                # The provider took the call before it failed, and bills what it wrote: charged as
                # a turn's failed try is, and a retry reserves anew.
                lost = await charge_lost(provider, attempt.generation_id, reservation.amount)
                budget.settle(reservation, lost.cost)
                billed += lost.cost
                text = "".join(attempt.text) + "".join(attempt.reasoning)
                counted = (await count_usage(provider, request.messages, text))[0] if text else Usage()
                written, used = written + counted, used + (counted.total_tokens or prompt)
                retry = None
                if delay is not None:
                    left = None if tokens_left is None else tokens_left - used
                    retry, why = reserve_retry(budget, model.pricing, prompt, max_tokens, left)
                    if retry is None:
                        delay, detail = None, f"{detail}; {why}"
            stopped = delay is not None and await wait_or_stop(self._sleep, delay, control)
            if delay is None or stopped:
                if retry is not None:
                    budget.release(retry)
                if stopped:
                    detail = control.detail or f"stopped while {purpose}"
                await self._settle_failed(dialogue_id, seq, model.id, billed, written, detail)
                raise Halted(control.reason if stopped else StopReason.PROVIDER_ERROR, detail)
            assert retry is not None
            if retry is not reservation:
                # What is billed is not yet on record: the in-flight record covers it too.
                await self._store.begin_call(dialogue_id, seq, retry.amount, self._clock(), billed)
            reservation = retry
        if attempt.interrupted is not None:
            # Cut off, it reports no cost: charged as a turn is, what the provider's record says
            # it cost, or else its reservation.
            lost = await charge_lost(provider, attempt.generation_id, reservation.amount)
            budget.settle(reservation, lost.cost)
            await self._store.settle_interrupted_calls(dialogue_id, {seq: lost.cost})
            raise Halted(attempt.interrupted, attempt.detail or control.detail or f"stopped while {purpose}")
        completion = attempt.completion
        assert completion is not None
        charged = charge(completion.usage, model.pricing, reservation.amount)
        budget.settle(reservation, charged.cost)
        usage = charged.usage + written
        return Summary("".join(attempt.text).strip(), completion.model, usage, charged.cost + billed)

    async def _settle_failed(
        self, dialogue_id: int, seq: int, model: str, billed: Decimal, usage: Usage, why: str
    ) -> None:
        """Close the record of a summary call that came to nothing: a note keeps what its tries
        were billed, if anything, and the tokens they wrote, in the dialogue's totals and the
        transcript."""
        if not billed:
            await self._store.cancel_call(dialogue_id, seq)
            return
        text = f"{why}; the provider took it first, and it was charged {format_usd(billed)}"
        note = Note(
            dialogue_id, seq, NoteKind.BILLING, text, self._clock(), model=model, usage=usage, cost_usd=billed
        )
        await self._store.add_note(note, settles_seq=seq)
