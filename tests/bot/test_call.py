"""One model call as the engine reads it: pieces that arrive together reach the front end together,
in order, and nothing of the reply is lost or moved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from bot.call import Attempt, stream_call
from bot.control import Control
from bot.providers.base import ChatRequest, Completion, ReasoningDelta, StreamEvent, TextDelta

REQUEST = ChatRequest(model="z-ai/glm-5", messages=[{"role": "user", "content": "Go."}], max_tokens=100)


class Burst:
    """A provider whose events come in bursts, as socket reads bring them: each burst at once, then
    a pause long enough for the reader to take what came."""

    source = "test"

    def __init__(self, bursts: list[list[StreamEvent]]):
        self.bursts = bursts

    def stream_mask(self) -> None:
        return None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        for burst in self.bursts:
            for event in burst:
                yield event
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    async def list_models(self) -> list:
        return []


async def read(bursts: list[list[StreamEvent]]) -> tuple[list[tuple[str, bool]], Attempt]:
    attempt = Attempt()
    deltas = [
        (delta.text, delta.reasoning)
        async for delta in stream_call(Burst(bursts), REQUEST, 0, attempt, Control(), None)
    ]
    return deltas, attempt


async def test_a_burst_of_pieces_reaches_the_reader_as_one_piece_of_each_kind_in_order():
    burst = [ReasoningDelta("a"), ReasoningDelta("b"), TextDelta("c"), TextDelta("d"), ReasoningDelta("e")]
    deltas, attempt = await read([burst, [TextDelta("f")], [Completion("stop", None, REQUEST.model)]])
    assert deltas == [("ab", True), ("cd", False), ("e", True), ("f", False)]
    assert "".join(attempt.text) == "cdf" and "".join(attempt.reasoning) == "abe"
    assert attempt.completion is not None and attempt.completion.finish_reason == "stop"


PIECES = st.lists(
    st.tuples(st.text(max_size=4), st.booleans()).map(
        lambda p: ReasoningDelta(p[0]) if p[1] else TextDelta(p[0])
    ),
    max_size=30,
)


@given(pieces=PIECES, cuts=st.lists(st.integers(0, 30), max_size=10))
def test_however_the_pieces_are_bunched_the_reply_and_the_reasoning_are_whole(pieces, cuts):
    bounds = sorted({0, len(pieces), *(c for c in cuts if c <= len(pieces))})
    bursts = [pieces[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    deltas, attempt = asyncio.run(read(bursts))
    text = "".join(p.text for p in pieces if isinstance(p, TextDelta))
    reasoning = "".join(p.text for p in pieces if isinstance(p, ReasoningDelta))
    assert "".join(t for t, r in deltas if not r) == "".join(attempt.text) == text
    assert "".join(t for t, r in deltas if r) == "".join(attempt.reasoning) == reasoning
    assert len(deltas) <= len(pieces)
