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


async def stream_call(
    provider: Provider,
    request: ChatRequest,
    seq: int,
    attempt: Attempt,
    control: Control,
    deadline: float | None,
) -> AsyncIterator[Delta]:
    """Stream one provider call into `attempt`, yielding its deltas.

    The stream runs in its own task feeding a queue, so a stop-now or the time limit can cut it
    off at once without cancelling whoever consumes the events.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()
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
                        queue.put_nowait(event)
        except TimeoutError:
            outcome = StopReason.TIME
        except BaseException as exc:
            outcome = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            queue.put_nowait(outcome)

    task = asyncio.create_task(pump())
    cancelled = False

    def interrupt() -> None:
        nonlocal cancelled
        # Cancelled once only: a second cancel would land while the stream is closing its response
        # and interrupt the close, leaving the provider streaming (and billing) to the end.
        if not cancelled:
            cancelled = True
            task.cancel()
        queue.put_nowait(control.reason)

    control._interrupt = interrupt
    try:
        if control.stop_now:
            interrupt()
        while (item := await queue.get()) is not None:
            if isinstance(item, Begun):
                attempt.generation_id = item.generation_id
            elif isinstance(item, TextDelta):
                text = repair(item.text)
                attempt.text.append(text)
                yield Delta(seq, text)
            elif isinstance(item, ReasoningDelta):
                text = repair(item.text)
                attempt.reasoning.append(text)
                yield Delta(seq, text, reasoning=True)
            elif isinstance(item, Completion):
                attempt.completion = item
            elif isinstance(item, StopReason):
                attempt.interrupted = item
                break
            elif isinstance(item, ProviderError):
                attempt.error = item
                break
            elif isinstance(item, BaseException):
                raise item
        if attempt.completion is None and attempt.error is None and attempt.interrupted is None:
            attempt.completion = Completion(None, None, request.model)
    finally:
        control._interrupt = None
        if not task.done():
            if not cancelled:
                cancelled = True
                task.cancel()
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
