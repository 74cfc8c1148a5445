"""The OpenRouter client against a real loopback server speaking the wire format."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    Moderation,
    OutOfCredits,
    ProviderError,
    RateLimited,
    ServerError,
)
from bot.providers import openai_compat
from bot.providers.base import ChatRequest, Completion, ReasoningDelta, TextDelta
from bot.providers.openai_compat import OpenAICompatProvider, SseParser
from bot.transport import make_client
from tests.conftest import API_KEY, GLM
from tests.fake_openrouter import FakeOpenRouter, Reply

REQUEST = ChatRequest(
    model=GLM,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    max_tokens=300,
    temperature=0.7,
    reasoning_effort="low",
    session_id="voices-1-0",
)


async def collect(
    provider: OpenAICompatProvider, request: ChatRequest = REQUEST
) -> tuple[str, str, Completion]:
    text, reasoning, completion = [], [], None
    async for event in provider.stream(request):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        else:
            completion = event
    assert completion is not None
    return "".join(text), "".join(reasoning), completion


async def test_request_carries_model_messages_limits_and_key(provider, server):
    """The request body and headers are what OpenRouter expects, with the key as a bearer token."""
    await collect(provider)
    (request,) = server.chat_requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["x-title"] == "Voices"
    assert request.headers["content-type"] == "application/json"
    body = request.body
    assert body["model"] == GLM and body["stream"] is True and body["max_tokens"] == 300
    assert body["messages"] == REQUEST.messages
    assert body["temperature"] == 0.7
    assert body["reasoning"] == {"effort": "low"}
    assert body["session_id"] == "voices-1-0"
    # Usage is asked for both ways: OpenRouter's field, and the one OpenAI-compatible servers read.
    assert body["usage"] == {"include": True} and body["stream_options"] == {"include_usage": True}


async def test_stream_yields_reasoning_then_text_and_usage_with_exact_cost(provider, server):
    """Keep-alives are skipped; reasoning and content arrive apart; usage comes from the last chunk."""
    server.enqueue(
        Reply(
            text="The fire settles and the form remains.",
            reasoning="Let me think about fire.",
            keepalives=3,
            usage={
                "prompt_tokens": 258,
                "completion_tokens": 1053,
                "completion_tokens_details": {"reasoning_tokens": 800},
                "cost": Decimal("0.00360123456789"),
            },
        )
    )
    text, reasoning, completion = await collect(provider)
    assert text == "The fire settles and the form remains."
    assert reasoning == "Let me think about fire."
    assert completion.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 258
    assert completion.usage.completion_tokens == 1053
    assert completion.usage.reasoning_tokens == 800
    assert completion.usage.cost_usd == Decimal("0.00360123456789")
    assert completion.generation_id == "gen-1"
    assert completion.model == GLM and completion.provider == "FakeProvider"


async def test_empty_content_with_length_is_reported_not_hidden(provider, server):
    """Every token spent on reasoning: no text, finish_reason length, reasoning tokens counted."""
    server.enqueue(
        Reply(
            text="",
            reasoning="thinking " * 20,
            finish_reason="length",
            usage={
                "prompt_tokens": 40,
                "completion_tokens": 20,
                "completion_tokens_details": {"reasoning_tokens": 20},
                "cost": Decimal("0.0001"),
            },
        )
    )
    text, _, completion = await collect(provider)
    assert text == ""
    assert completion.finish_reason == "length"
    assert completion.usage.reasoning_tokens == completion.usage.completion_tokens == 20


async def test_error_inside_a_200_stream_is_a_retryable_server_error(provider, server):
    """A mid-stream `error` object (HTTP 200) ends the reply with a typed, retryable error."""
    server.enqueue(
        Reply(
            text="Half a thought",
            error={"code": "server_error", "message": "Provider disconnected"},
        )
    )
    with pytest.raises(ServerError, match="Provider disconnected") as caught:
        await collect(provider)
    assert caught.value.retryable


async def test_mid_stream_rate_limit_keeps_its_status(provider, server):
    server.enqueue(Reply(text="Half", error={"code": 429, "message": "Rate limit exceeded"}))
    with pytest.raises(RateLimited):
        await collect(provider)


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "words"),
    [
        (400, BadRequest, False, "rejected the request"),
        (401, AuthError, False, "OPENROUTER_API_KEY"),
        (402, OutOfCredits, False, "out of credits"),
        (403, Moderation, False, "moderation"),
        (404, BadRequest, False, "rejected the request"),
        (408, RateLimited, True, "rate limited"),
        (429, RateLimited, True, "rate limited"),
        (500, ServerError, True, "provider failed"),
        (502, ServerError, True, "provider failed"),
        (503, ServerError, True, "provider failed"),
    ],
)
async def test_http_errors_map_to_typed_errors(provider, server, status, kind, retryable, words):
    """Each documented status becomes its own error with a one-line message that says what to do."""
    server.enqueue(Reply(status=status, error={"error": {"code": status, "message": "upstream said no"}}))
    with pytest.raises(ProviderError) as caught:
        await collect(provider)
    assert type(caught.value) is kind
    assert caught.value.retryable is retryable
    assert caught.value.status == status
    assert words in str(caught.value) and "upstream said no" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_retry_after_header_is_read(provider, server):
    server.enqueue(
        Reply(
            status=429,
            headers={"Retry-After": "7"},
            error={"error": {"code": 429, "message": "slow down"}},
        )
    )
    with pytest.raises(RateLimited) as caught:
        await collect(provider)
    assert caught.value.retry_after == 7.0


async def test_dropped_connection_is_a_retryable_connection_error(provider, server):
    server.enqueue(Reply(text="one two three four five six seven", drop_after_chunks=1))
    with pytest.raises(ConnectionFailed, match="dropped") as caught:
        await collect(provider)
    assert caught.value.retryable


async def test_stream_without_end_is_not_taken_for_a_reply(provider, server):
    """A stream that closes cleanly but never finishes (no finish_reason, no usage) is retryable."""
    server.enqueue(Reply(text="cut", finish_reason=None, send_usage=False, send_done=False))
    with pytest.raises(ConnectionFailed, match="ended before"):
        await collect(provider)


async def test_unreachable_base_url_names_the_address(http):
    provider = OpenAICompatProvider(http, "http://127.0.0.1:9/api/v1", API_KEY)
    with pytest.raises(ConnectionFailed, match="cannot reach http://127.0.0.1:9/api/v1"):
        await provider.list_models()
    with pytest.raises(ConnectionFailed, match="cannot reach"):
        await collect(provider)


async def test_read_timeout_is_a_connection_error(server):
    server.enqueue(Reply(text="late words arrive", chunk_delay=0.5, keepalives=0))
    async with make_client(httpx.Timeout(0.1)) as client:
        provider = OpenAICompatProvider(client, server.base_url, API_KEY)
        with pytest.raises(ConnectionFailed, match="in time"):
            await collect(provider)


async def test_echoed_key_never_reaches_the_error_message(provider, server):
    server.enqueue(Reply(status=401, error={"error": {"code": 401, "message": f"bad key {API_KEY}"}}))
    with pytest.raises(AuthError) as caught:
        await collect(provider)
    assert API_KEY not in str(caught.value) and "***" in str(caught.value)


async def test_catalogue_parses_prices_as_decimal_and_skips_variable_prices(provider):
    models = {m.id: m for m in await provider.list_models()}
    glm = models[GLM]
    assert glm.pricing.prompt == Decimal("0.0000008")
    assert glm.pricing.completion == Decimal("0.00000256")
    assert glm.context_length == 202752 and glm.max_completion_tokens == 131072
    assert "openrouter/auto" not in models


async def test_catalogue_prices_that_cannot_be_budgeted_leave_the_model_out(http):
    """NaN or infinite prices, or ones no model charges, would break every worst case they entered."""

    def model(name: str, price: str) -> dict:
        return {"id": f"x/{name}", "pricing": {"prompt": price, "completion": "0.00001"}}

    entries = [
        model("nan", "NaN"),
        model("inf", "Infinity"),
        model("huge", "1e30"),
        model("fine", "0.000001"),
    ]
    entries.append({"id": "x/cache", "pricing": {"prompt": "0.000001", "input_cache_read": "NaN"}})
    async with FakeOpenRouter(models=entries) as server:
        models = await OpenAICompatProvider(http, server.base_url, API_KEY).list_models()
    assert [m.id for m in models] == ["x/fine", "x/cache"]
    assert models[1].pricing.cache_read is None  # unknown, not NaN


@pytest.mark.parametrize("window", ["abc", -5, 0, 1e30, 10**40, [1], True, 0.5])
async def test_catalogue_token_limits_no_model_could_have_are_unknown(http, window):
    """They would be compared with counts, or stored in an integer column, on every turn."""
    entry = {"id": "x/y", "context_length": window, "top_provider": {"max_completion_tokens": window}}
    async with FakeOpenRouter(models=[entry, {"id": "x/z", "context_length": 200_000.0}]) as server:
        models = await OpenAICompatProvider(http, server.base_url, API_KEY).list_models()
    assert [(m.context_length, m.max_completion_tokens) for m in models] == [(None, None), (200_000, None)]


@pytest.mark.parametrize(
    "bad",
    [{"name": "no id"}, {"id": None}, {"id": " "}, "text", None, [1], {"id": "x/priced", "pricing": "free"}],
)
async def test_a_malformed_catalogue_entry_is_left_out_and_the_rest_kept(http, bad):
    """One entry the server got wrong made the whole catalogue, and so every run, fail."""
    odd = {"id": "x/odd", "name": {"a": 1}, "top_provider": "a"}
    async with FakeOpenRouter(models=[bad, {"id": "x/ok"}, odd]) as server:
        models = await OpenAICompatProvider(http, server.base_url, API_KEY).list_models()
    assert [(m.id, m.name) for m in models] == [("x/ok", "x/ok"), ("x/odd", "x/odd")]


async def test_a_catalogue_that_is_not_a_list_says_so(http):
    async with FakeOpenRouter(models={"x/ok": {}}) as server:  # type: ignore[arg-type]
        with pytest.raises(BadRequest, match="did not return a model list; is the base URL right"):
            await OpenAICompatProvider(http, server.base_url, API_KEY).list_models()


async def test_an_answer_past_the_bound_is_refused_in_one_line_not_held(http, monkeypatch):
    """A server that is not the API it claims to be could send a catalogue, or an error, without
    end; it was read whole into memory. Past the bound (32 MiB; 1 MiB here) the read stops."""
    monkeypatch.setattr(openai_compat, "MAX_ANSWER_BYTES", 2**20)
    models = [{"id": f"x/model-{n}", "name": "A model " * 20} for n in range(8000)]  # about 1.5 MB
    async with FakeOpenRouter(models=models) as server:
        base_url = server.base_url
        provider = OpenAICompatProvider(http, base_url, API_KEY)
        with pytest.raises(BadRequest) as catalogue:
            await provider.list_models()
        server.enqueue(Reply(status=500, error={"error": {"message": "x" * 2**21}}))
        with pytest.raises(BadRequest) as call:
            await collect(provider)
    assert str(catalogue.value) == f"{base_url}/models sent over 1 MiB in one answer; is the base URL right?"
    assert str(call.value) == (
        f"{base_url}/chat/completions sent over 1 MiB in one answer; is the base URL right?"
    )


async def test_catalogue_at_a_wrong_url_says_so(http, server):
    provider = OpenAICompatProvider(http, server.base_url + "/nothing-here", API_KEY)
    with pytest.raises(BadRequest):
        await provider.list_models()


@asynccontextmanager
async def web_server() -> AsyncIterator[str]:
    """A web server that is not an API, as a base URL with a typo finds: an HTML page for each
    request, 404 for every path."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        if "content-length:" in request:  # read whole, as a web server does
            await reader.readexactly(int(request.split("content-length:")[1].split("\r\n")[0]))
        page = b"<!DOCTYPE html>\n<html><head><title>404</title></head><body><h1>Not Found</h1></body></html>"
        head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nConnection: close\r\n"
        writer.write(f"{head}Content-Length: {len(page)}\r\n\r\n".encode())
        writer.write(page)
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/api"
    finally:
        listener.close()


async def test_a_base_url_that_finds_a_web_page_is_named_without_its_markup(http):
    async with web_server() as base_url:
        provider = OpenAICompatProvider(http, base_url, API_KEY)
        with pytest.raises(BadRequest) as catalogue:
            await provider.list_models()
        with pytest.raises(BadRequest) as call:
            await collect(provider)
    assert str(catalogue.value) == f"{base_url}/models was not found (404); is the base URL right?"
    assert str(call.value) == "the provider rejected the request (404: Not Found)"


@pytest.mark.parametrize("with_last_choice", [False, True])
async def test_usage_is_read_wherever_the_server_puts_it(provider, server, with_last_choice):
    """In a chunk of its own with empty choices (OpenRouter, OpenAI), or in the last choice chunk."""
    server.enqueue(Reply(text="two words", usage_with_last_choice=with_last_choice))
    events = [e async for e in provider.stream(REQUEST)]
    completion = events[-1]
    assert isinstance(completion, Completion) and completion.usage is not None
    assert completion.usage.completion_tokens == 2 and completion.usage.cost_usd == server.reported_costs[-1]


# Server-Sent Events on bytes ------------------------------------------------------------------------

SSE_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"a": 1}\n\n'
    b"data:no space\r\n\r\n"
    b"data: two\rdata: lines\r\r"
    b"event: ignored\ndata: caf\xc3\xa9 \xe2\x9c\x93\n\n"
    b"data: bad \xff byte\n\n"
    b"data: [DONE]"  # no blank line at the very end
)
SSE_DATA = ['{"a": 1}', "no space", "two\nlines", "café ✓", "bad \ufffd byte", "[DONE]"]


async def _parse(pieces):
    parser = SseParser()
    return [data for piece in pieces for data in parser.feed(piece)] + parser.close()


async def test_sse_events_are_read_whole_whatever_the_line_endings():
    assert await _parse([SSE_STREAM]) == SSE_DATA


@given(st.lists(st.integers(0, len(SSE_STREAM)), max_size=12))
async def test_sse_events_are_the_same_however_the_socket_cuts_the_stream(cuts):
    # A read may end anywhere: inside a CRLF, a UTF-8 character, a "data:" prefix or the blank line.
    points = sorted(set(cuts))
    pieces = [SSE_STREAM[a:b] for a, b in zip([0, *points], [*points, len(SSE_STREAM)], strict=True)]
    assert await _parse(pieces) == SSE_DATA


def _feed_seconds(event: bytes, piece: int) -> float:
    """CPU seconds to parse `event` fed `piece` bytes at a time (the least of three tries)."""
    tries = []
    for _ in range(3):
        parser, began = SseParser(), time.process_time()
        for at in range(0, len(event), piece):
            parser.feed(event[at : at + piece])
        assert parser.waiting == len(event)  # no blank line yet: all of it still one event
        tries.append(time.process_time() - began)
    return max(min(tries), 1e-4)


def test_an_event_sent_in_small_pieces_costs_what_it_costs_in_large_ones():
    """A server that sends an event without end, a little at a time, must not hold the event loop
    (and with it every dialogue of the process): each piece is looked at once. When each read joined
    and searched all the event before it, 2 MiB in 1 KiB pieces cost about 50 times what it cost in
    64 KiB ones (4 MiB, the most an event may hold, 9 s of CPU); read once, about the same."""
    event = b"data: " + b"x" * 2**21
    assert _feed_seconds(event, 2**10) < 25 * _feed_seconds(event, 2**16)


async def _serve_raw(body: bytes, headers: str = ""):
    """A one-reply HTTP server on loopback that sends `body` as the stream, exactly as given."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
            + headers.encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@asynccontextmanager
async def _raw_provider(body: bytes, headers: str = "") -> AsyncIterator[OpenAICompatProvider]:
    """A provider whose one reply is `body`, sent exactly as given."""
    server = await _serve_raw(body, headers)
    port = server.sockets[0].getsockname()[1]
    async with server, make_client(httpx.Timeout(5.0)) as client:
        yield OpenAICompatProvider(client, f"http://127.0.0.1:{port}/api/v1", API_KEY)


@pytest.mark.parametrize("encoding", ["", "gzip"])
async def test_the_last_event_counts_without_the_blank_line_after_it(encoding):
    stream = (
        b'data: {"choices": [{"delta": {"content": "Hello"}}]}\n\n'
        b'data: {"choices": [{"delta": {"content": " there"}, "finish_reason": "stop"}]}'
    )
    body = gzip.compress(stream) if encoding else stream
    async with _raw_provider(body, f"Content-Encoding: {encoding}\r\n" if encoding else "") as provider:
        text, _, completion = await collect(provider)
    assert text == "Hello there"
    assert completion.finish_reason == "stop"


async def test_words_read_in_the_same_piece_as_an_error_are_passed_on_before_it():
    """The screen shows what the model said up to the error, however the socket grouped it."""
    stream = (
        b'data: {"choices": [{"delta": {"content": "Half a"}}]}\n\n'
        b'data: {"error": {"code": "server_error", "message": "Provider disconnected"}}\n\n'
        b'data: {"choices": [{"delta": {"content": " never shown"}}]}\n\n'
    )
    seen = []
    async with _raw_provider(stream) as provider:  # one body, so one read: the pieces arrive together
        with pytest.raises(ServerError, match="Provider disconnected"):
            async for event in provider.stream(REQUEST):
                seen.append(event)
    assert [e.text for e in seen if isinstance(e, TextDelta)] == ["Half a"]


async def test_words_read_in_one_piece_travel_on_as_one_delta():
    """Events that arrived together are passed on together: the reader pays one hop per read, not
    one per word, and the words are the same."""
    stream = b"".join(
        b'data: {"choices": [{"delta": {"%s": "%s"}}]}\n\n' % (kind, word)
        for kind, word in [(b"reasoning", b"Think"), (b"reasoning", b" hard."), (b"content", b"Hello"),
                           (b"content", b" there"), (b"content", b" you")]
    ) + b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n'  # fmt: skip
    async with _raw_provider(stream) as provider:  # one body, so one read
        events = [e async for e in provider.stream(REQUEST)]
    deltas = [e for e in events if isinstance(e, TextDelta | ReasoningDelta)]
    assert deltas == [ReasoningDelta("Think hard."), TextDelta("Hello there you")]


async def test_an_event_is_read_whole_or_skipped_never_half_read():
    """White space around an event's JSON is allowed; an event with more after its JSON is noise,
    skipped whole, not taken for the object at its start."""
    stream = (
        b'data:  {"choices": [{"delta": {"content": "Hello"}}]}  \n\n'
        b'data: {"choices": [{"delta": {"content": " junk"}}]} {"more": 1}\n\n'
        b'data: {"choices": [{"delta": {"content": " there"}, "finish_reason": "stop"}]}\n\n'
    )
    async with _raw_provider(stream) as provider:
        text, _, completion = await collect(provider)
    assert text == "Hello there"
    assert completion.finish_reason == "stop"
