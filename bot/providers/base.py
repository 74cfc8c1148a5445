"""The provider interface: one streaming chat call and a model catalogue, whatever is behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

from bot.models import ModelInfo, Usage
from bot.text import StreamMask


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request, provider-neutral."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float | None = None
    reasoning_effort: str | None = None
    session_id: str | None = None
    chat_format: str | None = None
    #: Who speaks and who else is in the dialogue, for models prompted as a plain "Name: text" script.
    speaker: str | None = None
    others: tuple[str, ...] = ()
    #: Indices of messages to mark as prompt-cache breakpoints, for models that cache only when told.
    cache_breakpoints: tuple[int, ...] = ()
    #: Asks for repeatable sampling; providers that cannot ignore it.
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Begun:
    """The provider accepted the call and named it: the id under which it can later say what it cost."""

    generation_id: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the visible reply."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning, kept apart from the reply."""

    text: str


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a stream: why it finished, what it used and which model really answered."""

    finish_reason: str | None
    usage: Usage | None
    model: str
    generation_id: str | None = None
    provider: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


StreamEvent = Begun | TextDelta | ReasoningDelta | Completion


class Provider(Protocol):
    """Something that can stream a chat completion and list its models."""

    #: Identifies the catalogue this provider's model ids belong to (its base URL, say).
    source: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield deltas as they arrive, then exactly one Completion; raise ProviderError on failure."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """Return the provider's model catalogue."""
        ...

    def stream_mask(self) -> StreamMask | None:
        """Return a mask for one streamed text (a reply, or its reasoning) that keeps out the secret
        this provider sends, which its server could write back; None where it sends none."""
        ...


@runtime_checkable
class CostLookup(Protocol):
    """A provider that can say, after the fact, what a call cost (one cut off before its usage came)."""

    async def generation_cost(self, generation_id: str) -> Decimal | None:
        """Return what the call cost, or None if the provider cannot say (yet)."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that can count tokens as its model does (a server's tokenize endpoint)."""

    async def count_tokens(self, text: str) -> int | None:
        """Return how many tokens the text makes, or None if the provider cannot say."""
        ...
