"""The mailbox between an engine and a slow display, and the fair queue of a shared rate limit."""

from __future__ import annotations

import asyncio

from bot.mailbox import FairQueue, Mailbox


def join_text(old: str, new: str) -> str | None:
    """Merge pieces ("+" prefixed) into the piece before them; anything else stands alone."""
    return old + new[1:] if old.startswith("+") and new.startswith("+") else None


async def test_the_producer_never_waits_and_pieces_that_queue_up_travel_as_one():
    box: Mailbox[str] = Mailbox(join_text)
    for item in ["start", "+a", "+b", "+c", "end", "+d"]:
        box.put(item)  # no await: a slow consumer cannot hold the producer
    box.close()
    assert [item async for item in box] == ["start", "+abc", "end", "+d"]


async def test_a_consumer_that_keeps_up_sees_every_piece_and_nothing_is_lost():
    box: Mailbox[str] = Mailbox(join_text)
    seen: list[str] = []

    async def consume() -> None:
        async for item in box:
            seen.append(item)

    consumer = asyncio.create_task(consume())
    for piece in ["+a", "+b", "+c"]:
        box.put(piece)
        await asyncio.sleep(0)
    box.close()
    await consumer
    assert "".join(s[1:] for s in seen) == "abc"


async def test_an_error_reaches_the_consumer_after_what_came_before():
    box: Mailbox[str] = Mailbox()
    box.put("one")
    box.close(RuntimeError("engine failed"))
    seen = []
    try:
        async for item in box:
            seen.append(item)
    except RuntimeError as exc:
        assert str(exc) == "engine failed"
    assert seen == ["one"]


async def test_senders_take_turns_and_a_newer_edit_replaces_one_still_waiting():
    queue = FairQueue()
    done: list[str] = []
    gate = asyncio.Event()

    def job(name: str):
        async def call() -> str:
            if name == "a1":
                await gate.wait()  # the first request is slow: the others queue up behind it
            done.append(name)
            return name

        return call

    busy = [asyncio.create_task(queue.run("A", job("a1")))]
    await asyncio.sleep(0)
    busy += [asyncio.create_task(queue.run("A", job(n))) for n in ("a2", "a3", "a4")]
    busy += [asyncio.create_task(queue.run("B", job("b1"), key="edit-7"))]
    await asyncio.sleep(0)
    busy += [asyncio.create_task(queue.run("B", job("b1-newer"), key="edit-7"))]
    await asyncio.sleep(0)
    assert queue.waiting == 4
    gate.set()
    results = await asyncio.gather(*busy)
    # B is not starved behind A's backlog, and only the newest text of message 7 is sent.
    assert done == ["a1", "a2", "b1-newer", "a3", "a4"]
    assert results[-2:] == ["b1-newer", "b1-newer"]


async def test_a_failed_request_is_the_callers_and_the_queue_goes_on():
    queue = FairQueue()

    async def fail() -> None:
        raise ValueError("refused")

    async def ok() -> str:
        return "ok"

    first = asyncio.create_task(queue.run("A", fail))
    second = asyncio.create_task(queue.run("B", ok))
    assert isinstance((await asyncio.gather(first, return_exceptions=True))[0], ValueError)
    assert await second == "ok"
