"""What a running dialogue reports, in order: Started, then per turn TurnStarted, Delta…,
maybe TurnRestarted, TurnFinished; Noted between turns; finally Ended. Front ends render these and
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from bot.models import Dialogue, Note, Persona, Turn


@dataclass(frozen=True, slots=True)
class Started:
    """The dialogue is running (for the first time, or again after a pause or a crash)."""

    dialogue: Dialogue


@dataclass(frozen=True, slots=True)
class TurnStarted:
    """A speaker's call is about to be sent; `reserved` is its worst-case cost."""

    seq: int
    round: int
    seat: int
    persona: Persona
    reserved: Decimal


@dataclass(frozen=True, slots=True)
class AwaitingHuman:
    """A person's turn: the engine waits for their words (Control.say) until `timeout` seconds pass,
    then pauses."""

    seq: int
    round: int
    seat: int
    persona: Persona
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply in progress; `reasoning` pieces are the model's thinking, not its words."""

    seq: int
    text: str
    reasoning: bool = False


@dataclass(frozen=True, slots=True)
class TurnRestarted:
    """The call failed or came back empty and is tried again: discard the partial reply shown so far."""

    seq: int
    attempt: int
    reason: str
    delay: float
    #: What went wrong, as a short name: the error's class (RateLimited, ServerError…), or "Empty".
    kind: str = "Empty"


@dataclass(frozen=True, slots=True)
class TurnFinished:
    """A turn was committed; `spent` is the dialogue's total so far."""

    turn: Turn
    spent: Decimal


@dataclass(frozen=True, slots=True)
class Noted:
    """Something happened between turns (the history was compacted, a loop was noticed); it is stored."""

    note: Note


@dataclass(frozen=True, slots=True)
class Ended:
    """The run is over: the dialogue ended (see its stop reason) or was paused."""

    dialogue: Dialogue


Event = Started | AwaitingHuman | TurnStarted | Delta | TurnRestarted | TurnFinished | Noted | Ended
