"""Between a running dialogue and a slow display: a mailbox the engine never waits on, and a fair
queue for the requests that dialogues sharing one rate limit (a Discord webhook) make.

Plain asyncio, no Discord: the front end decides what merges and what a request is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Items from a producer that must never wait, to a consumer that may be slow.

    `put` never blocks. A new item may merge into the last one still waiting (pieces of one reply
    that queued up travel as one), so while the consumer is behind the box holds one item per
    thing that happened (a turn started, a reply, a turn finished), never one per piece: its size
    is bounded by the dialogue, not by the stream. Nothing is dropped.
    """

    def __init__(
        self,
        merge: Callable[[T, T], T | None] = lambda old, new: None,
        idle: Callable[[Awaitable[bool]], Awaitable[bool]] | None = None,
    ):
        """`idle` wraps the consumer's wait for the next item: a front end may declare it as a wait
        on something outside (SimCord, for one, must know it is not stuck work)."""
        self._idle = idle
        self._items: deque[T] = deque()
        self._merge = merge
        self._wake = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Add an item, merged into the last waiting one where `merge` says so."""
        if self._items and (merged := self._merge(self._items[-1], item)) is not None:
            self._items[-1] = merged
        else:
            self._items.append(item)
        self._wake.set()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; the consumer gets the ones waiting, then `error` if there is one."""
        self._closed, self._error = True, error
        self._wake.set()

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            self._wake.clear()
            woken = self._woken()
            await (self._idle(woken) if self._idle else woken)

    async def _woken(self) -> bool:
        await self._wake.wait()
        return True


@dataclass(eq=False)
class _Job:
    call: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]
    key: Hashable | None = None
    started: bool = False


@dataclass(eq=False)
class FairQueue:
    """Run requests one at a time, taking turns between senders, so that one busy dialogue cannot
    starve the others sharing a rate limit. A request queued under a key is replaced by a later one
    with the same key (an edit superseded by a newer edit of the same message): both callers get
    the newer one's result.
    """

    _queues: dict[Hashable, deque[_Job]] = field(default_factory=dict)
    _ring: deque[Hashable] = field(default_factory=deque)
    _keyed: dict[Hashable, _Job] = field(default_factory=dict)
    _worker: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Return how many requests wait their turn."""
        return sum(len(queue) for queue in self._queues.values())

    async def run(self, sender: Hashable, call: Callable[[], Awaitable[T]], key: Hashable | None = None) -> T:
        """Queue `call` for `sender` and return its result once its turn has come and gone."""
        queued = self._keyed.get(key) if key is not None else None
        if queued is not None and not queued.started and not queued.future.done():
            queued.call = call  # the newest text of a message wins
            result: T = await asyncio.shield(queued.future)
            return result
        job = _Job(call, asyncio.get_running_loop().create_future(), key)
        # A caller that gave up (cancelled) leaves the outcome unread: read it, or asyncio complains.
        job.future.add_done_callback(lambda done: done.cancelled() or done.exception())
        if key is not None:
            self._keyed[key] = job
        if sender not in self._queues:
            self._queues[sender] = deque()
            self._ring.append(sender)
        self._queues[sender].append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        result = await asyncio.shield(job.future)
        return result

    async def _work(self) -> None:
        while self._ring:
            sender = self._ring.popleft()
            queue = self._queues[sender]
            job = queue.popleft()
            if queue:
                self._ring.append(sender)  # back of the line: every other sender goes first
            else:
                del self._queues[sender]
            if self._keyed.get(job.key) is job:
                del self._keyed[job.key]
            job.started = True
            try:
                job.future.set_result(await job.call())
            except Exception as exc:  # the caller's to handle; the queue goes on
                job.future.set_exception(exc)
