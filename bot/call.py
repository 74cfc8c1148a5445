"""One model call, streamed in a task of its own so that a stop or the time limit can cut it off at once
without cancelling whoever reads the events; and the wait before a retry, which a stop also cuts short.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from bot.control import Control
from bot.errors import ProviderError
from bot.events import Delta
from bot.models import StopReason
from bot.providers.base import Begun, ChatRequest, Completion, Provider, ReasoningDelta, TextDelta
from bot.text import repair


@dataclass(slots=True)
class Attempt:
    """What one call produced."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    completion: Completion | None = None
    error: ProviderError | None = None
    interrupted: StopReason | None = None
    seconds: float = 0.0
    #: The provider's id for the call, once it accepted it (to ask what a cut-off call cost).
    generation_id: str | None = None
    #: Why Voices itself cut the reply off, when it did (`interrupted` says which stop that is).
    detail: str | None = None

    @property
    def taken(self) -> bool:
        """Whether the provider took the call (it named it, or words came): from then on it bills
        what it writes, whatever becomes of the stream."""
        return self.generation_id is not None or bool(self.text) or bool(self.reasoning)


#: The most characters a token may stand for. No tokenizer's tokens come near it, so a reply longer
#: than this many per token of its max_tokens is an endpoint that ignores the cap (a runaway local
#: server, a hostile one): it is cut off there, not held in memory until the time limit.
CHARACTERS_PER_TOKEN = 128


def reply_limit(max_tokens: int) -> int:
    """The most characters of text and reasoning a reply capped at `max_tokens` is read for."""
    return CHARACTERS_PER_TOKEN * max(max_tokens, 1)


class _Inbox:
    """What the stream task has read and the reader has not taken yet. The reader takes it all at
    once, so deltas that arrived together travel on as one: under load, one hop carries many."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[object] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: object) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list[object]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return _joined(items)


def _joined(items: list[object]) -> list[object]:
    """The items with each run of text deltas, and each run of reasoning deltas, made one."""
    if len(items) == 1:
        return items
    out: list[object] = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, (TextDelta, ReasoningDelta)) and type(last) is type(item):
            out[-1] = type(item)(last.text + item.text)
        else:
            out.append(item)
    return out


async def stream_call(
    provider: Provider,
    request: ChatRequest,
    seq: int,
    attempt: Attempt,
    control: Control,
    deadline: float | None,
) -> AsyncIterator[Delta]:
    """Stream one provider call into `attempt`, yielding its deltas.

    The stream runs in its own task feeding an inbox, so a stop-now or the time limit can cut it
    off at once without cancelling whoever consumes the events.
    """
    inbox = _Inbox()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def pump() -> None:
        # Whatever happens, the consumer gets one last item, or it would wait forever.
        outcome: object = None
        try:
            async with asyncio.timeout_at(deadline):
                # aclosing: a stream cut off here closes its connection now, not when it is collected.
                async with aclosing(provider.stream(request)) as events:  # type: ignore[type-var]
                    async for event in events:
                        inbox.put(event)
        except TimeoutError:
            outcome = StopReason.TIME
        except BaseException as exc:
            outcome = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            inbox.put(outcome)

    task = asyncio.create_task(pump())
    cancelled = False

    def cut() -> None:
        nonlocal cancelled
        # Cancelled once only: a second cancel would land while the stream is closing its response
        # and interrupt the close, leaving the provider streaming (and billing) to the end.
        if not cancelled:
            cancelled = True
            task.cancel()

    def interrupt() -> None:
        cut()
        inbox.put(control.reason)

    control._interrupt = interrupt
    limit = room = reply_limit(request.max_tokens)
    # A server that writes its key into the reply (a hostile one, a broken proxy) would have it shown,
    # stored and published: the key is masked here, before any of that, even split between deltas.
    text_mask, reasoning_mask = provider.stream_mask(), provider.stream_mask()
    try:
        if control.stop_now:
            interrupt()
        ended = False
        while not ended:
            items = await inbox.take()
            # The reply's text ends in this batch: what a mask keeps back goes out with its last delta.
            ending = len(items) > 1 and any(type(item) is Completion for item in items)
            for item in items:
                if isinstance(item, (TextDelta, ReasoningDelta)):
                    text = item.text
                    room -= len(text)
                    if room < 0:
                        text = text[: len(text) + room]  # the part that fits
                    if text:
                        reasoning = type(item) is ReasoningDelta
                        text = repair(text)
                        if (mask := reasoning_mask if reasoning else text_mask) is not None:
                            text = mask.feed(text) + (mask.flush() if ending else "")
                        if text:
                            (attempt.reasoning if reasoning else attempt.text).append(text)
                            yield Delta(seq, text, reasoning)
                    if room < 0:
                        # Read no further: the call ends as a stop does, and is billed as one.
                        cut()
                        attempt.interrupted = StopReason.PROVIDER_ERROR
                        attempt.detail = (
                            f"{request.model} sent more than {limit:,} characters "
                            f"for a reply capped at {request.max_tokens:,} tokens; it was cut off there"
                        )
                        ended = True
                        break
                elif isinstance(item, Begun):
                    attempt.generation_id = item.generation_id
                elif isinstance(item, Completion):
                    attempt.completion = item
                else:  # the end, a stop or a failure: nothing after it counts
                    if isinstance(item, StopReason):
                        attempt.interrupted = item
                    elif isinstance(item, ProviderError):
                        attempt.error = item
                    elif isinstance(item, BaseException):
                        raise item
                    ended = True
                    break
        # However the reply ended, what its masks kept back came from the provider: it is the reply's.
        for reasoning, mask in ((True, reasoning_mask), (False, text_mask)):
            if mask is not None and (text := mask.flush()):
                (attempt.reasoning if reasoning else attempt.text).append(text)
                yield Delta(seq, text, reasoning)
        if attempt.completion is None and attempt.error is None and attempt.interrupted is None:
            attempt.completion = Completion(None, None, request.model)
    finally:
        control._interrupt = None
        if not task.done():
            cut()
            await asyncio.wait({task})
        attempt.seconds = loop.time() - started


async def wait_or_stop(sleep: Callable[[float], Awaitable[None]], delay: float, control: Control) -> bool:
    """Sleep before a retry; return True when a stop-now cut the wait short."""
    if control.stop_now:
        return True
    task = asyncio.ensure_future(sleep(delay))

    def interrupt() -> None:
        task.cancel()

    control._interrupt = interrupt
    try:
        await task  # awaited directly, so schedulers and test harnesses see a plain timer
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not interrupted by a stop
    finally:
        control._interrupt = None
    return task.cancelled() or control.stop_now
