"""What the models are shown when the history outgrows a context: the oldest turns dropped
(truncate) or summarised (compact), each recorded as a note the thread and the transcript show."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from bot.budget import Budget
from bot.control import Control
from bot.models import ContextPolicy, Dialogue, Note, NoteKind, StopReason, Turn
from bot.plan import Halted, Tuning, TurnPlan, tokens_left
from bot.prompts import Window, build_messages
from bot.providers import Router
from bot.store import Store
from bot.summary import Summariser, summary_messages, summary_writer


class Compactor:
    """Make room in a dialogue's history for the next request, by the dialogue's context policy."""

    def __init__(
        self,
        store: Store,
        router: Router,
        summaries: Summariser,
        clock: Callable[[], datetime],
    ):
        self._store = store
        self._router = router
        self._summaries = summaries
        self._clock = clock

    async def make_room(
        self,
        dialogue: Dialogue,
        plan: TurnPlan,
        turns: Sequence[Turn],
        notes: Sequence[Note],
        budget: Budget,
        control: Control,
        deadline: float | None,
        tuning: Tuning,
    ) -> Note:
        """The next request will not fit: drop or summarise the oldest turns, per the dialogue's policy.

        Return the stored note (the window follows from the notes), or raise Halted when no window
        can fit: at least the last turn is always kept, so the speaker has something to answer.
        """
        overflow = plan.overflow()
        window = plan.window
        last = len(turns) - 1
        if last < 0:  # no history to drop or summarise: what the model is first told is too long
            raise Halted(
                StopReason.CONTEXT_LIMIT,
                f"{overflow}: the opening and system prompt alone; shorten them or choose a model "
                "with a longer context",
            )
        if dialogue.context_policy is ContextPolicy.TRUNCATE:
            first = next(
                (
                    k
                    for k in range(window.first_kept + 1, last + 1)
                    if self._fits(dialogue, plan, turns, notes, k)
                ),
                None,
            )
            if first is None:
                raise Halted(StopReason.CONTEXT_LIMIT, f"{overflow}, even with only the last turn kept")
            note = Note(
                dialogue.id,
                plan.seq,
                NoteKind.TRUNCATED,
                f"{first_turns(first)} left out to fit {plan.model.id}'s context; the opening stays.",
                self._clock(),
                first_kept_seq=first,
            )
            return await self._store.add_note(note)
        # Compact: keep a recent window verbatim (smaller only if it must be) and summarise the rest.
        # The summary takes at most half of what the reply leaves of the context.
        context = plan.model.context_length or 0
        room = max(16, min(tuning.summary_max_tokens, (context - plan.max_tokens) // 2))
        keep = min(tuning.keep_recent, last)
        start = max(len(turns) - keep, window.first_kept + 1)
        upto = next(
            (k for k in range(start, last + 1) if self._fits(dialogue, plan, turns, notes, k, room)), None
        )
        if upto is None or upto <= window.first_kept:
            raise Halted(StopReason.CONTEXT_LIMIT, f"{overflow}, even with the history summarised")
        return await self._summarise(
            dialogue, plan, turns, notes, window, upto, room, budget, control, deadline
        )

    @staticmethod
    def _fits(
        dialogue: Dialogue,
        plan: TurnPlan,
        turns: Sequence[Turn],
        notes: Sequence[Note],
        first_kept: int,
        extra: int = 0,
    ) -> bool:
        """Return whether the speaker's request fits its context with turns from `first_kept` on
        (and `extra` tokens of summary)."""
        context = plan.model.context_length
        assert context is not None
        placeholder = Window(first_kept, "" if extra else None, plan.seq)
        messages = build_messages(
            dialogue.participants, plan.seat, dialogue.opening, turns, placeholder, notes
        )
        return plan.expected(messages) + extra + plan.max_tokens <= context

    async def _summarise(
        self,
        dialogue: Dialogue,
        plan: TurnPlan,
        turns: Sequence[Turn],
        notes: Sequence[Note],
        window: Window,
        upto: int,
        room: int,
        budget: Budget,
        control: Control,
        deadline: float | None,
    ) -> Note:
        """Summarise turns before `upto` (with the previous summary, in at most `room` tokens) into a
        compaction note.

        The summary's call is budgeted like a turn: reserved at its worst case first, recorded as in
        flight (under the next turn's number) so a crash charges it, and settled into the totals
        with the note in one transaction.
        """
        persona, model, words = await summary_writer(
            self._router, dialogue.summary_model or plan.persona.model, plan.persona, room
        )
        max_tokens = persona.max_tokens or room

        def ask(upto: int) -> list[dict[str, str]]:
            kept = turns[window.first_kept : upto]
            return summary_messages(
                dialogue.participants, dialogue.opening, kept, notes, window.summary, words
            )

        messages = ask(upto)
        # The summariser must hold what it reads: with a small context it reads fewer turns.
        while (
            model.context_length is not None and plan.expected(messages) + max_tokens > model.context_length
        ):
            if upto - 1 <= window.first_kept:
                raise Halted(StopReason.CONTEXT_LIMIT, f"{model.id} cannot hold a single turn to summarise")
            upto -= 1
            messages = ask(upto)
        summary = await self._summaries.write(
            dialogue.id,
            plan.seq,
            persona,
            model,
            messages,
            budget,
            control,
            deadline,
            "compacting the history",
            tokens_left(dialogue.limits, plan.tokens_before),
        )
        kind, text = NoteKind.COMPACTED, summary.text
        if not summary.text:  # paid for but empty: fall back to leaving the turns out
            kind = NoteKind.TRUNCATED
            text = f"The summary came back empty, so {first_turns(upto).lower()} left out instead."
        note = Note(
            dialogue.id,
            plan.seq,
            kind,
            text,
            self._clock(),
            first_kept_seq=upto,
            model=summary.model,
            usage=summary.usage,
            cost_usd=summary.cost,
        )
        return await self._store.add_note(note, settles_seq=plan.seq)


def first_turns(count: int) -> str:
    return "Turn 1 is" if count == 1 else f"Turns 1–{count} are"
