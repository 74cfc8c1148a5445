"""The referee: a model that takes no turns but judges the dialogue, at its end and every few rounds.

Its calls are made like summaries (reserved at their worst case, paid from the dialogue's budget, kept
as notes), and while turns are played the dialogue holds back what its final verdict may cost. A
referee that cannot judge leaves a note saying why; it never fails the dialogue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from bot.budget import Budget, count_bytes, estimate_prompt_tokens, expected_tokens, worst_case_cost
from bot.control import Control
from bot.models import Dialogue, ModelInfo, Note, NoteKind, Persona, Turn, TurnStatus
from bot.plan import Halted, max_tokens_of, tokens_left, tokens_per_byte
from bot.prompts import ChatMessage
from bot.providers import Router
from bot.store import Store
from bot.summary import Summariser, conversation_lines

log = logging.getLogger(__name__)

#: A verdict is read in the thread: a few short paragraphs at most, whatever the persona's cap.
MAX_WORDS = 250

#: Bytes a reply's token may take, for holding back the final verdict's cost before the reply exists
#: (English averages about 4; the reserve is a forecast, the verdict's own reservation is exact).
BYTES_PER_TOKEN = 4


def due(dialogue: Dialogue, turn: Turn) -> bool:
    """Return whether an interim verdict is due after this turn: it closed a round the referee was
    asked to judge, and not the last round (the final verdict covers that one)."""
    every = dialogue.referee_every
    count = len(dialogue.participants)
    if dialogue.referee is None or not every or turn.seat != count - 1:
        return False
    return turn.round % every == 0 and turn.round < dialogue.limits.max_rounds


def already_judged(notes: Sequence[Note], at: int) -> bool:
    """Return whether the referee has had its say at this turn boundary (a resumed run would
    otherwise judge the same turns twice)."""
    return any(n.kind in (NoteKind.VERDICT, NoteKind.NO_VERDICT) and n.before_seq == at for n in notes)


def verdict_messages(
    dialogue: Dialogue,
    referee: Persona,
    turns: Sequence[Turn],
    notes: Sequence[Note],
    final: bool,
    words: int,
    left_out: int = 0,
) -> list[ChatMessage]:
    """Return the request that asks the referee for its verdict on these turns."""
    names = " and ".join(p.name for p in dialogue.participants)
    if final:
        task = (
            "It has ended. Say who made the stronger case and why, or, if they came to agree, "
            "what they agreed on."
        )
    else:
        rounds = max((t.round for t in turns), default=0)
        task = (
            f"It is after round {rounds} of {dialogue.limits.max_rounds}. Say briefly where each "
            "stands, who is ahead and why, and what is still open."
        )
    own = f"{referee.system_prompt.strip()}\n\n" if referee.system_prompt.strip() else ""
    system = (
        f"{own}You are the referee of a conversation between {names}, which opened with: "
        f"{dialogue.opening!r}. You take no part in it. {task} Plain prose, at most {words} words. "
        "Write only your verdict."
    )
    shown = [t for t in turns if t.seq >= left_out]
    lines = conversation_lines(shown, notes)
    before = f"(The first {left_out} turns are left out for length.)\n\n" if left_out else ""
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": before + "The conversation:\n\n" + "\n\n".join(lines)},
    ]


class Referee:
    """Ask a dialogue's referee for its verdict, and say what the final one may cost."""

    def __init__(self, store: Store, router: Router, summaries: Summariser, clock: Callable[[], datetime]):
        self._store = store
        self._router = router
        self._summaries = summaries
        self._clock = clock

    async def writer(self, referee: Persona) -> tuple[Persona, ModelInfo, int]:
        """Return the referee with its reply cap, its model, and the words to ask for."""
        model = await self._router.model(referee)
        persona = replace(referee, max_tokens=max_tokens_of(referee, model))
        assert persona.max_tokens is not None
        return persona, model, max(30, min(MAX_WORDS, persona.max_tokens * 3 // 5))

    async def reserve(
        self, dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note], pending_tokens: int = 0
    ) -> Decimal:
        """Return what the final verdict may cost once a reply of `pending_tokens` more is in: the
        amount turns leave untouched, so that the dialogue can still be judged when it ends."""
        if dialogue.referee is None:
            return Decimal(0)
        persona, model, words = await self.writer(dialogue.referee)
        messages = verdict_messages(dialogue, persona, turns, notes, True, words)
        prompt = estimate_prompt_tokens(count_bytes(messages)) + pending_tokens * BYTES_PER_TOKEN
        if model.context_length is not None:
            prompt = min(prompt, model.context_length)  # longer is read in part (see `judge`)
        assert persona.max_tokens is not None
        return worst_case_cost(model.pricing, prompt, persona.max_tokens)

    async def judge(
        self,
        dialogue: Dialogue,
        turns: Sequence[Turn],
        notes: Sequence[Note],
        budget: Budget,
        control: Control,
        final: bool,
    ) -> Note:
        """Ask for a verdict on the turns so far and store it; a failure is stored as why, instead."""
        referee = dialogue.referee
        assert referee is not None
        seq = len(turns)
        try:
            persona, model, words = await self.writer(referee)
            messages = self._fitting(dialogue, persona, model, turns, notes, final, words)
            what = "the referee's verdict"
            left = tokens_left(dialogue.limits, dialogue.totals.total_tokens)
            summary = await self._summaries.write(
                dialogue.id, seq, persona, model, messages, budget, control, None, what, left
            )
        except Halted as halted:
            return await self._store.add_note(self._failed(dialogue, referee, seq, halted.detail))
        except Exception as exc:  # a referee that breaks must not take the dialogue with it
            log.exception("dialogue %s: the referee failed", dialogue.id)
            why = f"{type(exc).__name__}: {exc}"
            return await self._store.add_note(self._failed(dialogue, referee, seq, why))
        if not summary.text:
            kind, text = NoteKind.NO_VERDICT, f"{referee.name} returned an empty verdict (paid for)."
        else:
            kind, text = NoteKind.VERDICT, summary.text
        note = Note(
            dialogue.id,
            seq,
            kind,
            text,
            self._clock(),
            model=summary.model,
            usage=summary.usage,
            cost_usd=summary.cost,
            author=referee.name,
        )
        return await self._store.add_note(note, settles_seq=seq)

    def _failed(self, dialogue: Dialogue, referee: Persona, seq: int, why: str) -> Note:
        at = self._clock()
        return Note(dialogue.id, seq, NoteKind.NO_VERDICT, why, at, model=referee.model, author=referee.name)

    @staticmethod
    def _fitting(
        dialogue: Dialogue,
        persona: Persona,
        model: ModelInfo,
        turns: Sequence[Turn],
        notes: Sequence[Note],
        final: bool,
        words: int,
    ) -> list[ChatMessage]:
        """Return the verdict request, leaving out the oldest turns while it does not fit the
        referee's context (the opening always stays)."""
        assert persona.max_tokens is not None
        rate = tokens_per_byte(dialogue, list(turns), list(notes))
        left_out = 0
        while True:
            messages = verdict_messages(dialogue, persona, turns, notes, final, words, left_out)
            fits = model.context_length is None or (
                expected_tokens(count_bytes(messages), rate) + persona.max_tokens <= model.context_length
            )
            answered = [t for t in turns if t.seq >= left_out and t.status is TurnStatus.OK]
            if fits or len(answered) <= 1:
                return messages
            left_out += 1
