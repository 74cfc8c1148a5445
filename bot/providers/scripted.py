"""A provider that replays queued replies and records every request: for tests and `voices run --dry-run`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from bot.errors import ProviderError
from bot.models import ModelInfo, Pricing, Usage
from bot.providers.base import ChatRequest, Completion, ReasoningDelta, StreamEvent, TextDelta


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """What the scripted provider answers to one call, or the error it raises."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = "stop"
    usage: Usage | None = None
    error: ProviderError | None = None
    chunk_delay: float = 0.0


#: The most characters of what it heard a dry-run reply quotes: well inside any reply cap.
ECHOED = 60


def echo_reply(request: ChatRequest) -> ScriptedReply:
    """Answer with a short line that names the model and what it was told: the dry-run default."""
    words = request.messages[-1]["content"].split()
    turn = sum(1 for m in request.messages if m["role"] == "assistant") + 1
    ending = " ".join(words[-5:])
    if len(ending) > ECHOED:  # a reply stays short, however long the words it heard
        ending = "…" + ending[-ECHOED:]
    text = (
        f"Dry-run reply {turn} from {request.model}: I heard {len(words)} words, ending "
        f"“{ending}”. A real model would answer here."
    )
    return ScriptedReply(text=text)


def free_models(model_ids: Iterable[str]) -> list[ModelInfo]:
    """Return catalogue entries that cost nothing, one for each of the given model ids."""
    return [
        ModelInfo(id=m, name=m, context_length=128_000, max_completion_tokens=None, pricing=Pricing())
        for m in dict.fromkeys(model_ids)
    ]


class ScriptedProvider:
    """Replay `enqueue`d replies in order; once the queue is empty, answer with `fallback`."""

    source = "scripted"

    def __init__(
        self,
        models: list[ModelInfo] | None = None,
        fallback: Callable[[ChatRequest], ScriptedReply] | None = echo_reply,
    ):
        self.models = models or []
        self.calls: list[ChatRequest] = []
        self._queue: deque[ScriptedReply] = deque()
        self._fallback = fallback

    def enqueue(self, *replies: ScriptedReply | str) -> None:
        """Queue replies (a str is a plain reply) for the next calls."""
        self._queue.extend(ScriptedReply(text=r) if isinstance(r, str) else r for r in replies)

    def stream_mask(self) -> None:
        """No secret is sent: nothing to mask."""
        return None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Record the request and stream the next reply word by word."""
        self.calls.append(request)
        if self._queue:
            reply = self._queue.popleft()
        elif self._fallback is not None:
            reply = self._fallback(request)
        else:
            raise AssertionError(f"no scripted reply left for call {len(self.calls)}")
        if reply.reasoning:
            yield ReasoningDelta(reply.reasoning)
        for index, word in enumerate(reply.text.split(" ") if reply.text else ()):
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            yield TextDelta(word if index == 0 else " " + word)
        if reply.error is not None:
            raise reply.error
        usage = reply.usage or Usage(
            prompt_tokens=sum(len(m["content"]) for m in request.messages) // 4 + 1,
            completion_tokens=len(reply.text) // 4 + 1,
            cost_usd=Decimal(0),
        )
        yield Completion(reply.finish_reason, usage, request.model)

    async def list_models(self) -> list[ModelInfo]:
        """Return the configured catalogue."""
        return list(self.models)
