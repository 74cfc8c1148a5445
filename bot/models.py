"""The engine's vocabulary: personas, limits, dialogues, turns, usage and the reasons a dialogue stops.

Plain frozen dataclasses and enums, shared by every other module; no I/O here.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Context, Decimal
from enum import StrEnum


class Status(StrEnum):
    """Where a dialogue is in its life: pending → running ⇄ paused → finished | stopped | failed."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (Status.FINISHED, Status.STOPPED, Status.FAILED)


class StopReason(StrEnum):
    """Why a dialogue ended; recorded on the dialogue and shown in every transcript."""

    MAX_ROUNDS = "max_rounds"
    BUDGET = "budget"
    TOKENS = "tokens"
    TIME = "time"
    USER_STOP = "user_stop"
    PROVIDER_ERROR = "provider_error"
    EMPTY_REPLY = "empty_reply"
    CONTEXT_LIMIT = "context_limit"
    CONVERGENCE = "convergence"
    THREAD_GONE = "thread_gone"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> Status:
        """Return the final status this reason leads to."""
        if self is StopReason.USER_STOP:
            return Status.STOPPED
        if self in (
            StopReason.PROVIDER_ERROR,
            StopReason.EMPTY_REPLY,
            StopReason.INTERNAL_ERROR,
            StopReason.THREAD_GONE,
        ):
            return Status.FAILED
        return Status.FINISHED

    @property
    def describe(self) -> str:
        """Return the reason in plain words, for people."""
        return _REASON_WORDS[self]


_REASON_WORDS = {
    StopReason.MAX_ROUNDS: "all rounds completed",
    StopReason.BUDGET: "the next call could have passed the budget",
    StopReason.TOKENS: "the token limit was reached",
    StopReason.TIME: "the time limit was reached",
    StopReason.USER_STOP: "stopped by the user",
    StopReason.PROVIDER_ERROR: "the model provider returned an error",
    StopReason.EMPTY_REPLY: "a model returned an empty reply twice",
    StopReason.CONTEXT_LIMIT: "the history no longer fits a model's context",
    StopReason.CONVERGENCE: "the dialogue was going in circles",
    StopReason.THREAD_GONE: "the dialogue's thread was deleted or locked",
    StopReason.INTERNAL_ERROR: "an internal error",
}


class Ask(StrEnum):
    """What one process may ask of a dialogue another process runs."""

    STOP = "stop"  # after the turn in flight
    STOP_NOW = "stop_now"  # cutting the turn in flight off
    PAUSE = "pause"  # after the turn in flight; `resume` goes on
    SAY = "say"  # a member's words for the turn that waits on them

    @classmethod
    def of(cls, action: str, now: bool = False) -> Ask:
        """Return the ask for a person's "stop" (at once, with `now`) or "pause"."""
        if action == "pause":
            return cls.PAUSE
        return cls.STOP_NOW if now else cls.STOP

    @property
    def when(self) -> str:
        """When a stop or a pause takes effect, in words."""
        return "now" if self is Ask.STOP_NOW else "after the turn in flight"


class TurnStatus(StrEnum):
    """How one turn ended: a reply, an empty reply (kept visible, never silent), or cut off."""

    OK = "ok"
    EMPTY = "empty"
    CANCELLED = "cancelled"


class ContextPolicy(StrEnum):
    """What happens when the next request would not fit a model's context."""

    STOP = "stop"  # end the dialogue with `context_limit`
    TRUNCATE = "truncate"  # drop the oldest turns, keep the opening
    COMPACT = "compact"  # summarise the oldest turns, keep a recent window verbatim


class LoopAction(StrEnum):
    """What happens when the dialogue goes in circles."""

    NOTIFY = "notify"
    PAUSE = "pause"
    STOP = "stop"


HUMAN = "human:"


@dataclass(frozen=True, slots=True)
class Persona:
    """A voice: who speaks, with which model and behind which system prompt.

    A person takes a seat as a persona whose model is `human:<who>` (a Discord member's id, or
    `terminal`): the engine waits for their words instead of calling a model.
    """

    name: str
    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    reasoning_effort: str | None = None
    avatar_url: str | None = None
    #: A provider named in the persona library; None means the default (OpenRouter). Models whose
    #: id starts with `local:` always run in this process.
    provider: str | None = None
    #: USD per token, for providers that publish no prices (a local server is free unless set).
    prompt_price: Decimal | None = None
    completion_price: Decimal | None = None
    #: For a local model: a llama.cpp chat format ("chatml", "gemma", …) instead of the file's own.
    chat_format: str | None = None

    @property
    def is_human(self) -> bool:
        return self.model.startswith(HUMAN)

    @property
    def human_id(self) -> str | None:
        """Who sits in a human seat (a member id, or `terminal`); None for a model."""
        return self.model.removeprefix(HUMAN) if self.is_human else None


@dataclass(frozen=True, slots=True)
class Limits:
    """What a dialogue may use before it stops."""

    max_rounds: int
    budget_usd: Decimal
    max_total_tokens: int | None = None
    max_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class DialogueSpec:
    """Everything needed to create a dialogue."""

    participants: tuple[Persona, ...]
    opening: str
    limits: Limits
    origin: str = "cli"
    context_policy: ContextPolicy = ContextPolicy.STOP
    loop_action: LoopAction = LoopAction.NOTIFY
    #: The model that writes summaries when compacting; None means the speaker's own model.
    summary_model: str | None = None
    #: A continuation or fork: the dialogue it comes from, and the turns it carries over.
    parent: Lineage | None = None
    inherited: tuple[Turn, ...] = ()
    inherited_notes: tuple[Note, ...] = ()
    #: The seed every call is sent (plus the turn's number), so a run can be repeated; None draws one.
    seed: int | None = None
    #: A model that takes no turns but judges the dialogue at its end (and every `referee_every` rounds).
    referee: Persona | None = None
    referee_every: int | None = None


class LineageKind(StrEnum):
    """How a dialogue comes from an earlier one."""

    CONTINUE = "continue"
    FORK = "fork"


#: The origin of a dialogue run with `--dry-run`: scripted answers, no cost, nothing real.
DRY_RUN = "dry-run"

#: Seeds stay within a signed 32-bit integer, the widest that every provider and llama.cpp take.
MAX_SEED = 2**31 - 1


def new_seed() -> int:
    """Draw a seed for a dialogue that was not given one."""
    return secrets.randbelow(MAX_SEED + 1)


def call_seed(seed: int, seq: int) -> int:
    """Return the seed of turn `seq`'s call: a run repeats with the seed, and no two turns share one."""
    return (seed + seq) % (MAX_SEED + 1)


@dataclass(frozen=True, slots=True)
class Child:
    """A dialogue that comes from this one: its id, and whether it continues it or forks it."""

    id: int
    kind: LineageKind


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a dialogue comes from: the parent's id, how, and how many of its turns it carried over."""

    parent_id: int
    kind: LineageKind
    turns: int

    @property
    def describe(self) -> str:
        """Return where the dialogue comes from, in a few words ("fork of 3 at turn 5")."""
        if self.kind is LineageKind.FORK:
            return f"fork of {self.parent_id} at turn {self.turns}"
        return f"continues {self.parent_id}"


@dataclass(frozen=True, slots=True)
class Totals:
    """Running sums over a dialogue's turns."""

    spent_usd: Decimal = Decimal(0)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    interrupted_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Tally:
    """What a dialogue's turns add up to, for its status: how many there are, and over its own
    turns (carried-over ones were paid for, and cached, in their own dialogue) each seat's tokens
    and what the prompt cache saved."""

    turns: int = 0
    seats: Mapping[int, Usage] = field(default_factory=dict)
    saved: Decimal = Decimal(0)

    @classmethod
    def of(cls, turns: Sequence[Turn]) -> Tally:
        """Return the tally of turns at hand (the store sums its own: `Store.tally`)."""
        seats: dict[int, Usage] = {}
        for turn in turns:
            if not turn.inherited:  # tokens only: the money is the dialogue's totals'
                tokens = replace(turn.usage, cost_usd=None, estimated=False)
                seats[turn.seat] = seats.get(turn.seat, Usage()) + tokens
        saved = sum((t.cache_saving_usd for t in turns if not t.inherited), start=Decimal(0))
        return cls(len(turns), seats, saved)

    @property
    def cached(self) -> int:
        """Prompt tokens read from the cache."""
        return sum(usage.cached_tokens for usage in self.seats.values())

    @property
    def written(self) -> int:
        """Prompt tokens written to the cache."""
        return sum(usage.cache_write_tokens for usage in self.seats.values())


@dataclass(frozen=True, slots=True)
class Dialogue:
    """A dialogue as stored: its spec, its state and its totals."""

    id: int
    participants: tuple[Persona, ...]
    opening: str
    limits: Limits
    status: Status
    created_at: datetime
    origin: str = "cli"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    stop_reason: StopReason | None = None
    stop_detail: str | None = None
    totals: Totals = field(default_factory=Totals)
    context_policy: ContextPolicy = ContextPolicy.STOP
    loop_action: LoopAction = LoopAction.NOTIFY
    summary_model: str | None = None
    parent: Lineage | None = None
    children: tuple[Child, ...] = ()
    seed: int | None = None
    referee: Persona | None = None
    referee_every: int | None = None
    #: The audience's vote on the dialogue, once one was opened.
    vote: AudienceVote | None = None


@dataclass(frozen=True, slots=True)
class AudienceVote:
    """A vote the audience was asked at the end of a dialogue: one answer per participant, and once
    it closed, the votes each answer got (None while it is open, or when its tally was lost)."""

    question: str
    answers: tuple[str, ...]
    opened_at: datetime
    closes_at: datetime
    counts: tuple[int, ...] | None = None
    closed_at: datetime | None = None

    @property
    def result(self) -> str:
        """Return the outcome in a few words: who got most votes, a tie, none, or still open."""
        if self.closed_at is None:
            return f"open until {self.closes_at.strftime('%Y-%m-%d %H:%M UTC')}"
        if self.counts is None:
            return "closed without a tally (its message was deleted)"
        tally = " · ".join(f"{a} {n}" for a, n in zip(self.answers, self.counts, strict=True))
        total = sum(self.counts)
        if not total:
            return f"{tally}: no votes"
        best = max(self.counts)
        leaders = [a for a, n in zip(self.answers, self.counts, strict=True) if n == best]
        verdict = f"most votes: {leaders[0]}" if len(leaders) == 1 else f"a tie: {' and '.join(leaders)}"
        return f"{tally} ({total} vote{'s' if total != 1 else ''}; {verdict})"


def matching(text: str, models: Iterable[ModelInfo]) -> list[ModelInfo]:
    """Return the models whose id or name contains `text`, case-insensitive: what every model
    search (OpenRouter's catalogue, a stored copy, the local models) means by a match."""
    needle = text.lower()
    return [m for m in models if needle in m.id.lower() or needle in m.name.lower()]


def plain(amount: Decimal) -> str:
    """Return an amount in plain decimal notation, no exponent and no trailing zeros ("0", not "0E-9"):
    the form money takes in the store and the transcripts, which every reader of decimals parses."""
    wide = Context(prec=60)  # normalize rounds to the context's precision; money must not be rounded
    text = format(amount.normalize(wide), "f")
    return "0" if text in ("-0", "0") else text


#: No call reads or writes a billion tokens, and no model's window holds that many: a count above
#: this is a provider's fault (priced, or summed into a dialogue's totals, it would overflow a
#: Decimal's 28 digits or a database integer).
MAX_TOKENS = 1_000_000_000
#: No model costs this many USD a token, or a request: a price above it is a catalogue's (or a
#: persona file's) fault, and the worst case of a call priced so would overflow those 28 digits.
MAX_PRICE = Decimal(1000)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and cost of one model call, as the provider reported them.

    `cached_tokens` (read from the prompt cache) and `cache_write_tokens` (written to it) are part
    of `prompt_tokens`, as OpenRouter reports them.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    #: The provider reported no usage: the token counts were estimated (a tokenizer, or bytes).
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Prompt and reply: what a dialogue's token limit counts."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = None
        if self.cost_usd is not None or other.cost_usd is not None:
            cost = (self.cost_usd or Decimal(0)) + (other.cost_usd or Decimal(0))
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            cost,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True, slots=True)
class Turn:
    """One committed turn of a dialogue."""

    dialogue_id: int
    seq: int
    round: int
    seat: int
    speaker: str
    status: TurnStatus
    text: str
    reasoning: str
    usage: Usage
    cost_usd: Decimal
    cost_source: str
    model_used: str
    finish_reason: str | None
    latency_ms: int
    attempts: int
    started_at: datetime
    ended_at: datetime
    generation_id: str | None = None
    provider: str | None = None
    #: What the prompt cache saved on this turn against the uncached price (negative when it only wrote).
    cache_saving_usd: Decimal = Decimal(0)
    #: Carried over from the parent dialogue: shown, fed to the models, but not spent again here.
    inherited: bool = False

    def record(self) -> dict[str, object]:
        """Return every field as plain values (money as exact strings, times in ISO 8601)."""
        return {
            "dialogue_id": self.dialogue_id,
            "seq": self.seq,
            "round": self.round,
            "seat": self.seat,
            "status": str(self.status),
            "text": self.text,
            "reasoning": self.reasoning,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "usage_estimated": self.usage.estimated,
            "cost_usd": plain(self.cost_usd),
            "cache_saving_usd": plain(self.cache_saving_usd),
            "cost_source": self.cost_source,
            "model_used": self.model_used,
            "provider": self.provider,
            "generation_id": self.generation_id,
            "finish_reason": self.finish_reason,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat(),
            "inherited": self.inherited,
        }

    @property
    def is_human(self) -> bool:
        return self.cost_source == HUMAN_SOURCE

    @property
    def cut_short(self) -> str | None:
        """Why an answered reply stopped before the model ended it, in one sentence, or None: its
        last words may break off, and every view says so rather than leave readers to guess."""
        if self.status is TurnStatus.OK:
            return _CUT_SHORT.get(self.finish_reason or "")
        return None


_CUT_SHORT = {
    "length": "Stopped at the reply's token limit (max_tokens); it may end mid-sentence.",
    "content_filter": "Stopped by the provider's content filter; it may end mid-sentence.",
}

#: The cost source of a turn a person wrote: no tokens, no cost.
HUMAN_SOURCE = "human"


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per token (and per request), parsed from the catalogue's strings into Decimal."""

    prompt: Decimal = Decimal(0)
    completion: Decimal = Decimal(0)
    request: Decimal = Decimal(0)
    internal_reasoning: Decimal = Decimal(0)
    #: Prompt-cache prices; None when the model publishes none (its tokens then cost `prompt`).
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    @property
    def is_free(self) -> bool:
        """True when no token or request costs anything (a local server, a free model)."""
        prices = (
            self.prompt,
            self.completion,
            self.request,
            self.internal_reasoning,
            self.cache_read,
            self.cache_write,
        )
        return not any(prices)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of a provider's model catalogue."""

    id: str
    name: str
    context_length: int | None
    max_completion_tokens: int | None
    pricing: Pricing


class NoteKind(StrEnum):
    """Something that happened between turns, kept in its place in the transcript."""

    TRUNCATED = "truncated"
    COMPACTED = "compacted"
    REPETITION = "repetition"
    FAREWELLS = "farewells"
    IMPERSONATION = "impersonation"
    INTERJECTION = "interjection"
    MEMORY = "memory"
    #: A provider's bill that could not be taken as it was: what was wrong, and what was charged.
    BILLING = "billing"
    #: The referee's judgement of the dialogue so far (or, at its end, of all of it).
    VERDICT = "verdict"
    #: The referee was due to judge and could not (the budget, the provider): why, in words.
    NO_VERDICT = "no_verdict"

    @property
    def is_context(self) -> bool:
        """True for the notes that change what the models are shown."""
        return self in (NoteKind.TRUNCATED, NoteKind.COMPACTED)

    @property
    def is_loop(self) -> bool:
        """True for the signs of a dialogue going in circles."""
        return self in (NoteKind.REPETITION, NoteKind.FAREWELLS, NoteKind.IMPERSONATION)


@dataclass(frozen=True, slots=True)
class Note:
    """One note between turns: shown before turn `before_seq` (0-based), in the thread and transcript.

    A context note says which turns the models still see verbatim (from `first_kept_seq`) and, for a
    compaction, the summary that stands for the rest and what writing it cost.
    """

    dialogue_id: int
    before_seq: int
    kind: NoteKind
    text: str
    created_at: datetime
    first_kept_seq: int | None = None
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = Decimal(0)
    #: Who wrote an interjection (a member's display name), and their id, by which they are
    #: forgotten on request (names change and repeat).
    author: str | None = None
    id: int | None = None
    author_id: str | None = None

    def record(self) -> dict[str, object]:
        """Return every field as plain values (money as an exact string)."""
        return {
            "before_seq": self.before_seq,
            "kind": str(self.kind),
            "author": self.author,
            "author_id": self.author_id,
            "text": self.text,
            "first_kept_seq": self.first_kept_seq,
            "model": self.model,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cost_usd": plain(self.cost_usd),
            "created_at": self.created_at.isoformat(),
        }
