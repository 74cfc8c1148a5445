"""The engine's HTTP transport (httpx over aiohttp): it keeps connections alive, and never reuses
one the server has closed; it goes through the proxy the environment names, as httpx did; and it
reads a stream at the pace asked, without losing its end or a stop."""

import asyncio
import gc
import json

import httpx
import pytest

from bot.errors import ConnectionFailed
from bot.providers.base import TextDelta
from bot.providers.openai_compat import OpenAICompatProvider
from bot.transport import make_client
from tests.bot.providers.test_openai_compat import REQUEST, collect
from tests.conftest import API_KEY
from tests.fake_openrouter import FakeOpenRouter, Reply


async def test_one_connection_carries_turn_after_turn(provider: OpenAICompatProvider, server: FakeOpenRouter):
    for _ in range(3):
        await collect(provider)
    assert len(server.chat_requests) == 3
    assert server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    provider: OpenAICompatProvider, server: FakeOpenRouter
):
    await collect(provider)
    assert server.close_idle() == 1
    await asyncio.sleep(0.1)  # the close reaches the client, as it does long before a next turn
    text, _, completion = await collect(provider)
    assert text and completion.finish_reason == "stop"
    assert server.connections == 2


@pytest.mark.parametrize("pace", [0.0, 0.05])
async def test_a_finished_call_leaves_nothing_for_the_cycle_collector(server: FakeOpenRouter, pace: float):
    """Each call's objects go when the call is done. Left in reference cycles (httpx's response and
    its stream point at each other), 300 dialogues' calls piled up for the cycle collector, which
    freed them in pauses of 0.2 s that every dialogue waited out."""
    server.enqueue(*(Reply(text="a few words to stream", chunk_words=1) for _ in range(3)))
    async with make_client(httpx.Timeout(10)) as http:
        provider = OpenAICompatProvider(http, server.base_url, API_KEY, read_pace=pace)
        await collect(provider)  # the connection and the session are made once, outside the count
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(2):
                text, _, completion = await collect(provider)
                assert text == "a few words to stream" and completion.finish_reason == "stop"
            gc.collect()
            left = [type(o).__qualname__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert left == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_engine_keeps_no_cookie_a_server_sets(server: FakeOpenRouter, host: str):
    """The API knows Voices by its key: a cookie one reply sets is not sent back with the next,
    whether the server is reached by address or by name (as openrouter.ai is, which sets one)."""
    server.enqueue(Reply(text="one", headers={"Set-Cookie": "__cf_bm=tracking; Path=/; HttpOnly"}))
    async with make_client(httpx.Timeout(10)) as http:
        provider = OpenAICompatProvider(http, server.base_url.replace("127.0.0.1", host), API_KEY)
        for _ in range(2):
            text, _, _ = await collect(provider)
            assert text
        assert not http.cookies
    assert [r.headers.get("cookie") for r in server.chat_requests] == [None, None]


async def test_requests_go_through_the_proxy_the_environment_names(server: FakeOpenRouter, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", server.base_url.removesuffix("/api/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with make_client(httpx.Timeout(5.0)) as http:
        provider = OpenAICompatProvider(http, "http://openrouter.invalid/api/v1", API_KEY)
        text, _, _ = await collect(provider)
    assert text
    assert server.chat_requests[0].proxied_url == "http://openrouter.invalid/api/v1/chat/completions"


async def test_a_host_no_proxy_names_is_reached_directly(server: FakeOpenRouter, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with make_client(httpx.Timeout(5.0)) as http:
        text, _, _ = await collect(OpenAICompatProvider(http, server.base_url, API_KEY))
    assert text
    assert server.chat_requests[0].proxied_url is None


async def test_a_server_that_never_answers_is_named_in_one_line_after_the_read_timeout():
    gave_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the request in, answers nothing, until the client gives up
        writer.close()
        gave_up.set()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        async with make_client(httpx.Timeout(0.2)) as http:
            provider = OpenAICompatProvider(http, f"http://127.0.0.1:{port}/api/v1", API_KEY)
            with pytest.raises(ConnectionFailed) as caught:
                await collect(provider)
        await gave_up.wait()
    assert str(caught.value) == f"no answer from http://127.0.0.1:{port}/api/v1 in time (ReadTimeout)"


@pytest.mark.parametrize("pace", [0, 0.05])
async def test_a_stream_that_stalls_mid_reply_fails_once_no_data_came_for_the_read_timeout(server, pace):
    server.enqueue(Reply(text="one two three four", chunk_words=1, chunk_delay=0.05, keepalives=0))
    server.enqueue(Reply(text="late words arrive", chunk_words=1, chunk_delay=0.5, keepalives=0))
    async with make_client(httpx.Timeout(0.3)) as http:
        provider = OpenAICompatProvider(http, server.base_url, API_KEY, read_pace=pace)
        text, _, _ = await collect(provider)  # pieces 50 ms apart are well inside 0.3 s
        assert text == "one two three four"
        with pytest.raises(ConnectionFailed, match=r"in time \(ReadTimeout\)"):
            await collect(provider)


@pytest.mark.parametrize("pace", [0, 0.05])
async def test_a_slow_stream_that_never_falls_silent_for_the_read_timeout_is_read_to_its_end(server, pace):
    """The timeout is for silence, not for the whole reply: words 0.2 s apart, for more than four
    times the 0.3 s timeout, arrive whole."""
    words = "one two three four five six seven"
    server.enqueue(Reply(text=words, chunk_words=1, chunk_delay=0.2, keepalives=0))
    async with make_client(httpx.Timeout(0.3)) as http:
        provider = OpenAICompatProvider(http, server.base_url, API_KEY, read_pace=pace)
        text, _, completion = await collect(provider)
    assert text == words
    assert completion.finish_reason == "stop"


async def _pieces(server: FakeOpenRouter, pace: float) -> list[bytes]:
    """The pieces a chat reply's body is read in, with the given pace."""
    async with make_client(httpx.Timeout(5.0)) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        extensions = {"read_pace": pace} if pace else None
        async with http.stream(
            "POST", f"{server.base_url}/chat/completions", json=body, extensions=extensions
        ) as response:
            return [piece async for piece in response.aiter_bytes()]


async def test_a_paced_stream_is_read_in_fewer_pieces_with_every_event_whole(server: FakeOpenRouter):
    """What arrives between two reads comes out in one piece: a reply streamed a word every 10 ms,
    read every 100 ms, takes a few reads rather than one per word."""
    words = " ".join(f"w{i}" for i in range(30))
    for _ in range(2):
        server.enqueue(Reply(text=words, chunk_words=1, chunk_delay=0.01, keepalives=0))
    unpaced, paced = await _pieces(server, 0), await _pieces(server, 0.1)
    assert _words(paced) == _words(unpaced) == words
    assert len(unpaced) >= 30
    assert len(paced) <= 10
    assert all(piece.endswith(b"\n\n") for piece in paced)  # each read ends between events here


async def _read_at(http: httpx.AsyncClient, server: FakeOpenRouter, pace: float) -> list[float]:
    """The loop's times at which a chat reply's body is read, with the given pace."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    loop = asyncio.get_running_loop()
    url = f"{server.base_url}/chat/completions"
    async with http.stream("POST", url, json=body, extensions={"read_pace": pace}) as response:
        return [loop.time() async for _ in response.aiter_bytes()]


async def test_streams_at_a_long_pace_are_read_in_turns_not_all_at_once(server: FakeOpenRouter):
    """A pace longer than 0.05 s is cut into slots that streams take in turn: four streams read every
    0.2 s are read on four different ticks, each on its own. On one tick for all, 300 dialogues
    read every 0.25 s had a quarter second of words read in one burst, which a dialogue whose turn
    ended in it waited out."""
    pace, streams = 0.2, 4
    words = " ".join(f"w{i}" for i in range(100))  # a second of words, 10 ms apart
    reply = Reply(text=words, chunk_words=1, chunk_delay=0.01, keepalives=0)
    server.enqueue(*(reply for _ in range(streams)))
    async with make_client(httpx.Timeout(5.0)) as http:
        reads = await asyncio.gather(*(_read_at(http, server, pace) for _ in range(streams)))
    # The first read is at once and the last when the body ends; those between wait for a tick.
    slots = [{round(t % pace / (pace / streams)) % streams for t in times[1:-1]} for times in reads]
    assert all(len(times) <= 1 / pace + 3 for times in reads)  # still about one read per pace
    assert all(len(taken) == 1 for taken in slots)  # each stream keeps to its slot
    assert len(set().union(*slots)) == streams  # and no two share one


async def test_a_paced_stream_ends_when_its_body_does_not_when_the_pace_is_up(server: FakeOpenRouter):
    """The end of a reply is seen as it comes: a read waiting out its pace is woken by it."""
    server.enqueue(Reply(text="one two three", chunk_words=1, chunk_delay=0.01, keepalives=0))
    async with make_client(httpx.Timeout(5.0)) as http:
        provider = OpenAICompatProvider(http, server.base_url, API_KEY, read_pace=60)
        text, _, completion = await asyncio.wait_for(collect(provider), timeout=20)
    assert text == "one two three"
    assert completion.finish_reason == "stop"


async def test_a_paced_stream_is_cut_off_at_once(server: FakeOpenRouter):
    """A stop cuts a stream that waits out its pace without waiting for it, and closes the connection."""
    server.enqueue(Reply(text="word " * 200, chunk_words=1, chunk_delay=0.01, keepalives=0))
    async with make_client(httpx.Timeout(5.0)) as http:
        provider = OpenAICompatProvider(http, server.base_url, API_KEY, read_pace=60)
        first = asyncio.Event()

        async def read() -> None:
            async for event in provider.stream(REQUEST):
                if isinstance(event, TextDelta):
                    first.set()

        reading = asyncio.create_task(read())
        await asyncio.wait_for(first.wait(), timeout=20)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(reading, timeout=20)
        await asyncio.wait_for(_closed(server), timeout=20)


def _words(pieces: list[bytes]) -> str:
    """The reply's text, from the events in the pieces read."""
    events = b"".join(pieces).decode().split("\n\n")
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))


async def _closed(server: FakeOpenRouter) -> None:
    while server.open_connections:
        await asyncio.sleep(0.01)
