"""One turn's plan: who speaks next, what they are shown, how big the reply may be, and whether it
fits the model's context; the Tuning of long dialogues; and Halted and Stop, why a run cannot go on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from bot.budget import Budget, Reservation, count_bytes, expected_tokens, worst_case_cost
from bot.loops import LoopThresholds
from bot.models import Dialogue, Limits, ModelInfo, Note, Persona, Pricing, StopReason, Turn, TurnStatus
from bot.prompts import Window, build_messages, current_window


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
    #: Seconds a person has for their turn before the dialogue pauses for them (None: no limit).
    human_timeout: float | None = 600.0
    #: Seconds a dialogue's lease lasts unless renewed: how soon a dead process's dialogue is taken over.
    lease_seconds: float = 15.0


class Halted(Exception):
    """The run cannot go on: the reason it stops, and why in words."""

    def __init__(self, reason: StopReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def tokens_left(limits: Limits, used: int) -> int | None:
    """Return how many tokens the dialogue's calls may still use, or None with no token limit."""
    return None if limits.max_total_tokens is None else limits.max_total_tokens - used


def reserve_retry(
    budget: Budget, pricing: Pricing, prompt: int, max_tokens: int, left: int | None
) -> tuple[Reservation | None, str]:
    """Reserve another try of a call (a prompt bound of `prompt` tokens, a reply cap of
    `max_tokens`) within the `left` tokens the tries before it left under the limit, then within
    the budget; or say which left no room for one."""
    if left is not None and prompt + max_tokens > left:
        return None, "the token limit left no room to retry"
    retry = budget.reserve(worst_case_cost(pricing, prompt, max_tokens))
    return retry, "" if retry is not None else "the budget left no room to retry"


@dataclass(slots=True)
class Stop:
    """Why a run ends; no reason means a pause."""

    reason: StopReason | None
    detail: str | None = None


@dataclass(slots=True)
class TurnPlan:
    """The next turn, worked out before anything is spent on it."""

    seq: int
    round: int
    seat: int
    persona: Persona
    model: ModelInfo
    messages: list[dict[str, str]]
    #: The messages' byte bound (`count_bytes`), worked out as they were built.
    prompt_bytes: int
    max_tokens: int
    prompt_estimate: int
    window: Window = field(default_factory=Window)
    #: Prompt tokens per byte of the bound, as the dialogue's latest call showed (1.0 before any).
    tokens_per_byte: float = 1.0
    started_at: datetime | None = None
    #: Tokens the dialogue had used before this turn (its limit bounds the turn's retries too).
    tokens_before: int = 0

    def expected(self, messages: Sequence[dict[str, str]]) -> int:
        """Return the prompt tokens messages are expected to make (for fitting, not for money)."""
        return expected_tokens(count_bytes(messages), self.tokens_per_byte)

    def overflow(self) -> str | None:
        """Say how the request would pass the model's context, or return None when it fits."""
        context = self.model.context_length
        expected = min(self.prompt_estimate, expected_tokens(self.prompt_bytes, self.tokens_per_byte))
        if context is None or expected + self.max_tokens <= context:
            return None
        return (
            f"{self.persona.name}: about {expected} prompt tokens + {self.max_tokens} for "
            f"the reply exceed {self.model.id}'s {context}"
        )


def max_tokens_of(persona: Persona, model: ModelInfo) -> int:
    wanted = persona.max_tokens or 1024
    return min(wanted, model.max_completion_tokens) if model.max_completion_tokens else wanted


def tokens_per_byte(dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note]) -> float:
    """Return prompt tokens per byte of the bound on the latest answered call (1.0 before any)."""
    for turn in reversed(turns):
        if turn.inherited:
            break  # asked under another dialogue's prompts
        if turn.status is TurnStatus.OK and turn.usage.prompt_tokens and turn.attempts == 1:
            window = current_window(notes, at=turn.seq)
            sent = build_messages(
                dialogue.participants, turn.seat, dialogue.opening, turns[: turn.seq], window, notes
            )
            return min(1.0, turn.usage.prompt_tokens / count_bytes(sent))
    return 1.0
