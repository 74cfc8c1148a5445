"""OpenAI-compatible chat completions (OpenRouter first) over an injected httpx.AsyncClient.

Streams Server-Sent Events, maps HTTP and mid-stream errors to the typed errors of `bot.errors`,
and reads the catalogue from `GET /models`. Wire facts: shared/reference/openrouter-api.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

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
from bot.models import MAX_PRICE, MAX_TOKENS, ModelInfo, Pricing, Usage
from bot.providers.base import Begun, ChatRequest, Completion, ReasoningDelta, StreamEvent, TextDelta
from bot.text import Masker, StreamMask

log = logging.getLogger(__name__)

APP_TITLE = "Voices"


class OpenAICompatProvider:
    """A chat-completions endpoint such as https://openrouter.ai/api/v1."""

    #: Seconds between asks for a generation's record, which appears a moment after the call ends.
    LOOKUP_WAITS: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)

    #: Tokenize endpoints of servers that report no usage: llama-cpp-python's, then llama.cpp's own.
    TOKENIZERS: tuple[tuple[str, str], ...] = (("/extras/tokenize", "input"), ("/tokenize", "content"))

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        generation_lookups: bool = True,
        key_setting: str = "OPENROUTER_API_KEY",
        read_pace: float = 0.0,
    ):
        """`generation_lookups`: the server keeps OpenRouter's `GET /generation` records (others
        answer 404, which would cost a cut-off call three seconds of asking). `key_setting` names
        where its key is set, for the line that says it was rejected. `read_pace`: seconds between
        reads of a streamed reply, where the transport can pace them (bot/transport.py)."""
        self._key_setting = key_setting
        self._stream_extensions = {"read_pace": read_pace} if read_pace else None
        self.source = base_url.rstrip("/")
        # Parsed once: httpx parses a URL given as text on every request.
        self._chat_url = httpx.URL(f"{self.source}/chat/completions")
        self._http = http
        self._api_key = api_key
        self._lookups = generation_lookups
        #: The tokenize endpoint that answered (None: not tried yet; "": none does).
        self._tokenizer: tuple[str, str] | str | None = None
        self._mask = Masker([api_key] if api_key else [])
        # The chat request's headers, merged with the client's once: httpx would merge them, and
        # encode each name and value again, on every request.
        self._chat_headers = httpx.Headers(http.headers)
        self._chat_headers.update({**self._headers(), "Content-Type": "application/json"})

    def _headers(self) -> dict[str, str]:
        headers = {"X-Title": APP_TITLE, "X-OpenRouter-Title": APP_TITLE}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def stream_mask(self) -> StreamMask | None:
        """Return a mask that keeps the key, or any part of it, out of one streamed text: a server
        that writes it into a reply (a hostile or broken one) would have it published."""
        return self._mask.stream()

    def _scrub(self, text: str) -> str:
        """Remove the key, or any part of it, from text that came back from the server."""
        return self._mask(text)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply's deltas, then one Completion."""
        call = httpx.Request(
            "POST",
            self._chat_url,
            headers=self._chat_headers,
            content=_encode(_request_body(request)),
            extensions=self._stream_extensions,
        )
        try:
            async with _sent(self._http, call) as response:
                if response.status_code != 200:
                    raise self._http_error(response, await self._read_whole(response))
                generation_id = response.headers.get("x-generation-id")
                generation_id = generation_id and self._scrub(generation_id)
                if generation_id:
                    yield Begun(generation_id)
                reply = _Reply(
                    self.source, self._stream_error, self._scrub, request.model, generation_id, self._lookups
                )
                # Each chunk is parsed here with plain calls, where it went through two async
                # generators stacked on httpx's: this costs less per token (docs/benchmarks.md §9).
                # Uncompressed, the body is read as it came: one generator and decoder fewer per read.
                encoded = "content-encoding" in response.headers
                chunks = response.aiter_bytes() if encoded else response.aiter_raw()
                async for chunk in chunks:
                    for event in reply.read(chunk):
                        yield event
                    if reply.done:
                        break
                for event in reply.end():
                    yield event
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    async def _answer(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
        """Send a request and read its answer whole (within MAX_ANSWER_BYTES)."""
        async with self._http.stream(method, url, headers=self._headers(), **kwargs) as response:
            return response, await self._read_whole(response)

    async def _read_whole(self, response: httpx.Response) -> bytes:
        """Return a body read to its end; raise BadRequest past MAX_ANSWER_BYTES, where a server
        is not the API it claims to be (a catalogue of every model is about a megabyte), rather
        than hold whatever it sends in memory."""
        pieces, size = [], 0
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > MAX_ANSWER_BYTES:
                raise BadRequest(
                    f"{response.request.url.copy_with(query=None)} sent over {MAX_ANSWER_BYTES // 2**20} MiB "
                    "in one answer; is the base URL right?"
                )
            pieces.append(piece)
        return b"".join(pieces)

    def _transport_error(self, exc: httpx.TransportError) -> ConnectionFailed:
        """Say what went wrong with the connection, in one line, without the key."""
        if isinstance(exc, httpx.TimeoutException):
            return ConnectionFailed(f"no answer from {self.source} in time ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError) and (refused := _untrusted(exc)) is not None:
            return ConnectionFailed(
                f"the certificate of {self.source} is not trusted ({refused}); "
                "if your network has its own certificate authority, name its file in SSL_CERT_FILE"
            )
        if isinstance(exc, httpx.ConnectError):
            reason = self._scrub(str(exc)) or "connection refused"
            return ConnectionFailed(
                f"cannot reach {self.source} ({reason}); check the base URL and your network"
            )
        return ConnectionFailed(f"the connection to {self.source} dropped ({type(exc).__name__})")

    def _http_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        detail = self._scrub(_error_message(response, body))
        retry_after = _retry_after(response.headers.get("retry-after"))
        return _error_for_status(status, detail, retry_after, self._key_setting)

    def _stream_error(self, error: Any) -> ProviderError:
        error = error if isinstance(error, dict) else {"message": str(error)}
        message = self._scrub(str(error.get("message") or "error inside the stream"))
        code = error.get("code")
        status = code if isinstance(code, int) else None
        if status is not None and 400 <= status < 600:
            return _error_for_status(status, message, None, self._key_setting)
        return ServerError(f"the model failed mid-reply: {message}")

    async def generation_cost(self, generation_id: str) -> Decimal | None:
        """Return what a call cost from `GET /generation?id=`, or None if it cannot be had.

        The record often appears a moment after the call ends (a 404 until then), so it is asked
        for a few times, a little longer apart each time, for about three seconds in all.
        """
        if not self._lookups:
            return None
        url = f"{self.source}/generation"
        for wait in (*self.LOOKUP_WAITS, None):
            try:
                response, body = await self._answer("GET", url, params={"id": generation_id})
            except (httpx.TransportError, ProviderError):
                return None
            if response.status_code == 200:
                try:
                    cost = json.loads(body, parse_float=Decimal)["data"]["total_cost"]
                except (ValueError, KeyError, TypeError):
                    return None
                return _decimal(cost) if cost is not None else None
            if response.status_code != 404 or wait is None:
                return None
            await asyncio.sleep(wait)
        return None

    async def count_tokens(self, text: str) -> int | None:
        """Return the tokens `text` makes on this server, from its tokenize endpoint, if it has one."""
        if self._tokenizer == "":
            return None
        root = self.source.removesuffix("/v1")
        candidates = [self._tokenizer] if isinstance(self._tokenizer, tuple) else list(self.TOKENIZERS)
        for path, field in candidates:
            try:
                response, body = await self._answer("POST", f"{root}{path}", json={field: text})
                tokens = json.loads(body)["tokens"] if response.status_code == 200 else None
            except (httpx.HTTPError, ProviderError, ValueError, KeyError, TypeError):
                tokens = None
            if isinstance(tokens, list):
                self._tokenizer = (path, field)
                return len(tokens)
        self._tokenizer = ""
        return None

    async def list_models(self) -> list[ModelInfo]:
        """Fetch the model catalogue from `GET /models`."""
        url = f"{self.source}/models"
        try:
            response, body = await self._answer("GET", url)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.status_code == 404:  # a web server at the wrong address, most often
            raise BadRequest(f"{url} was not found (404); is the base URL right?", status=404)
        if response.status_code != 200:
            raise self._http_error(response, body)
        try:
            entries = json.loads(body, parse_float=Decimal)["data"]
        except (ValueError, KeyError, TypeError):
            entries = None
        if not isinstance(entries, list):
            raise BadRequest(f"{url} did not return a model list; is the base URL right?")
        # An entry whose id carries the key is not offered (its id is what a member would pick and
        # see); a name that does has the key masked.
        offered = []
        for model in map(_parse_model, entries):
            if model is not None and self._scrub(model.id) == model.id:
                name = self._scrub(model.name)
                offered.append(model if name == model.name else replace(model, name=name))
        return offered


def check_web_url(value: str) -> httpx.URL:
    """Return an http(s) URL parsed; raise ValueError saying what is wrong with one that no request
    could be sent to (httpx, or Discord for an avatar, would refuse it later, far from the setting)."""
    if any(c.isspace() for c in value):
        # httpx would quote a space into the host or path (".../v1%20"), and every call would fail.
        raise ValueError("holds white space; write it as one web address, https://HOST/PATH")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if not url.host:
        raise ValueError("names no host: write it as https://HOST/PATH")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"has port {url.port}; a port is a number from 1 to 65535")
    return url


def check_base_url(value: str) -> str:
    """Return a server's base URL without its trailing slash; raise ValueError saying what is wrong
    with one no request could be sent to (httpx would raise on every call, deep in a turn)."""
    if check_web_url(value).userinfo:
        # The transport refuses a URL's credentials beside the key's Authorization header, on every
        # call; and a password there would be shown wherever the URL is.
        raise ValueError("holds a name or password before its host; leave it out: the key is sent apart")
    return value.rstrip("/")


@asynccontextmanager
async def _sent(http: httpx.AsyncClient, request: httpx.Request) -> AsyncIterator[httpx.Response]:
    """The response to a request built whole, closed on the way out, as httpx's `stream` does."""
    response = await http.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


def _encode(body: dict[str, Any]) -> bytes:
    """The body as httpx's `json=` encodes it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _request_body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _with_breakpoints(request.messages, request.cache_breakpoints),
        "max_tokens": request.max_tokens,
        "stream": True,
        # Deprecated and without effect on OpenRouter today, but older deployments need it to send cost.
        "usage": {"include": True},
        # OpenAI's API and many compatible servers stream usage only when asked this way;
        # OpenRouter accepts it beside its own field (shared/reference/openrouter-api.md).
        "stream_options": {"include_usage": True},
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.seed is not None:
        body["seed"] = request.seed
    if request.reasoning_effort:
        body["reasoning"] = {"effort": request.reasoning_effort}
    if request.session_id:
        body["session_id"] = request.session_id
    return body


def _with_breakpoints(messages: list[dict[str, str]], marks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Return the messages with each marked one's content as a text part carrying `cache_control`:
    OpenRouter's way (after Anthropic's) of saying "cache the prompt up to here"."""
    if not marks:
        return list(messages)
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if index in marks:
            part = {"type": "text", "text": message["content"], "cache_control": {"type": "ephemeral"}}
            out.append({**message, "content": [part]})
        else:
            out.append(message)
    return out


#: The longest event read. One event carries one delta (a few hundred bytes from OpenRouter, a
#: whole reply from a server that does not stream); more than this without the blank line that ends
#: an event is not a stream of events, and would be held in memory, and scanned again at each read.
MAX_EVENT_BYTES = 4 * 2**20
#: The most a whole answer (the catalogue, a generation's record, an error) is read for.
MAX_ANSWER_BYTES = 32 * 2**20


class SseParser:
    """Server-Sent Events, fed as the socket reads them: `feed` returns the data of each event it
    completed, comments (`: OPENROUTER PROCESSING`) skipped; `close` the last one, if the stream
    ended without the blank line after it.

    Read on bytes, split at blank lines, and decoded once per event: a stream is one small event
    per socket read, and splitting it into text lines first cost more than the rest of the parse.
    Lines may end in CRLF, LF or CR, as the SSE format allows; text that is not UTF-8 becomes U+FFFD.

    Each byte is looked at a bounded number of times, however the stream is cut. An event that
    arrives in many small pieces is kept as those pieces, and each new piece is searched alone
    (and where it meets the last), not the whole event again: a server sending 4 MiB without a
    blank line, 1 KiB at a time, held the event loop for 9 s of CPU when every read joined and
    searched all that came before it.
    """

    __slots__ = ("_pieces", "_size", "_cr")

    def __init__(self) -> None:
        #: The event begun and not yet ended, as it came; it never holds a blank line.
        self._pieces: list[bytes] = []
        self._size = 0
        #: The last piece ended in CR, held back: it may be the first half of a CRLF.
        self._cr = False

    def feed(self, chunk: bytes) -> list[str]:
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        pieces = self._pieces
        if pieces:
            # The blank line may begin in the last piece and end in this one.
            if b"\n\n" not in chunk and not (chunk.startswith(b"\n") and pieces[-1].endswith(b"\n")):
                pieces.append(chunk)
                self._size += len(chunk)
                return []
            chunk = b"".join(pieces) + chunk
            pieces.clear()
        elif b"\n\n" not in chunk:
            pieces.append(chunk)
            self._size = len(chunk)
            return []
        *events, rest = chunk.split(b"\n\n")
        if rest:
            pieces.append(rest)
        self._size = len(rest)
        return [data for event in events if (data := _event_data(event)) is not None]

    @property
    def waiting(self) -> int:
        """Bytes of an event begun and not yet ended."""
        return self._size

    def close(self) -> list[str]:
        event = b"".join(self._pieces) + (b"\n" if self._cr else b"")
        self._pieces, self._size, self._cr = [], 0, False
        data = _event_data(event)
        return [] if data is None else [data]


def _event_data(event: bytes) -> str | None:
    """Return the data lines of one event, joined, or None for an event with none (a comment)."""
    if event.startswith(b"data: ") and b"\n" not in event:  # nearly every event: one line of data
        return event[6:].decode("utf-8", "replace")
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    data = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
    return data.decode("utf-8", "replace")


class _Reply:
    """One streamed reply as read so far: each event's data becomes the deltas it carries, and the
    end of the stream one Completion (or the error of a stream cut short)."""

    __slots__ = (
        "_source", "_error", "_mask", "_named", "_events",
        "model", "generation_id", "provider", "finish_reason", "usage", "done", "failure",
    )  # fmt: skip

    def __init__(
        self,
        source: str,
        error: Callable[[Any], ProviderError],
        mask: Callable[[str], str],
        model: str,
        generation_id: str | None,
        named: bool,
    ):
        """`error` makes the error an event's `error` field names; `mask` hides the key in the names
        and the finish reason the events give, which are kept and published with the turn.
        `named`: the server keeps a record of each call under its id (OpenRouter's `/generation`),
        worth a Begun event."""
        self._source = source
        self._error = error
        self._mask = mask
        self._named = named
        self._events = SseParser()
        self.model = model
        self.generation_id = generation_id
        self.provider: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        #: The server said `[DONE]`, or sent an error: whatever follows is not part of the reply.
        self.done = False
        #: The error an event reported, raised by `end` once the deltas before it are out.
        self.failure: ProviderError | None = None

    def read(self, chunk: bytes) -> list[StreamEvent]:
        """Return the deltas in the events `chunk` completed."""
        events = self._events.feed(chunk)
        if self._events.waiting > MAX_EVENT_BYTES:
            raise ProviderError(
                f"the stream from {self._source} sent over {MAX_EVENT_BYTES // 2**20} MiB without ending "
                "an event; it does not speak OpenAI's stream format, so check the base URL"
            )
        return self._deltas(events)

    def end(self) -> list[StreamEvent]:
        """Return the deltas of an event the stream ended without its blank line after, then how
        the reply ended; raise the error an event reported, or if the stream stopped before the
        reply did."""
        last = [] if self.done else self._deltas(self._events.close())
        if self.failure is None and self.finish_reason == "error":
            # OpenRouter sends an error object with it; a server that sends the reason alone has
            # still said the reply failed, so its words so far are not an answer.
            self.failure = self._error({"message": "the stream ended with finish_reason error"})
        if self.failure is not None:
            raise self.failure
        if not self.done and self.finish_reason is None and self.usage is None:
            raise ConnectionFailed(f"the stream from {self._source} ended before the reply did")
        completion = Completion(self.finish_reason, self.usage, self.model, self.generation_id, self.provider)
        return [*last, completion]

    def _deltas(self, events: list[str]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for data in events:
            if data == "[DONE]":
                self.done = True
                break
            chunk = _parse_json(data)
            if chunk is None:
                continue  # a line that is not JSON is noise, not a reason to lose the reply
            if "error" in chunk:
                self.failure, self.done = self._error(chunk["error"]), True
                break
            # Every event repeats the model, provider and id: read them only while they change.
            if (model := chunk.get("model")) != self.model and (model := _text(model)):
                self.model = self._mask(model)
            if (provider := chunk.get("provider")) != self.provider and (provider := _text(provider)):
                self.provider = self._mask(provider)
            if not self.generation_id and (generation_id := _text(chunk.get("id"))):
                self.generation_id = self._mask(generation_id)
                if self._named:
                    # No header named the call: the stream's id does, so a reply cut off from here
                    # on can still be asked what it cost, and a crash leaves it on record.
                    out.append(Begun(self.generation_id))
            if chunk.get("usage"):
                self.usage = _parse_usage(chunk["usage"])
            choices = chunk.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                choice = choice if isinstance(choice, dict) else {}
                delta = choice.get("delta")
                delta = delta if isinstance(delta, dict) else {}
                if reasoning := _text(delta.get("reasoning")) or _text(delta.get("reasoning_content")):
                    _add(out, ReasoningDelta, reasoning)
                if content := _text(delta.get("content")):
                    _add(out, TextDelta, content)
                if (finish := choice.get("finish_reason")) is not None and (finish := _text(finish)):
                    self.finish_reason = self._mask(finish)
        return out


def _add(out: list[StreamEvent], kind: type[TextDelta] | type[ReasoningDelta], text: str) -> None:
    """Append a delta, joined to the one before it when that is of its kind: the events of one read
    arrived together, and travel on as one."""
    if out and type(out[-1]) is kind:
        out[-1] = kind(out[-1].text + text)
    else:
        out.append(kind(text))


def _text(value: Any) -> str | None:
    """Return a field that should be text, or None when the server sent something else."""
    return value if isinstance(value, str) else None


#: One decoder for every event (json.loads with an option builds a new one per call).
_JSON = json.JSONDecoder(parse_float=Decimal)


def _parse_json(data: str) -> dict[str, Any] | None:
    try:
        try:
            # The scan alone: an event is one JSON object, edge to edge. decode() would look for
            # white space around it with two regular expressions first, a fifth of the parse.
            value, end = _JSON.raw_decode(data)
        except ValueError:
            end = -1
        if end != len(data):  # white space around it, extra data, or no JSON: decode() says which
            value = _JSON.decode(data)
    except (ValueError, RecursionError):
        log.warning("skipped a stream line that is not JSON (%d bytes)", len(data))
        return None
    return value if isinstance(value, dict) else None


def _parse_usage(raw: Any) -> Usage:
    """Read a usage object as the server wrote it. Nothing is judged here: a count that is not a whole
    number reads as -1 and a cost that is not a number as NaN, so that billing sees the fault."""
    if not isinstance(raw, dict):
        return Usage(-1, -1)
    details = raw.get("completion_tokens_details") or {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    details = details if isinstance(details, dict) else {}
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    cost = raw.get("cost")
    return Usage(
        prompt_tokens=_count(raw.get("prompt_tokens")),
        completion_tokens=_count(raw.get("completion_tokens")),
        reasoning_tokens=_count(details.get("reasoning_tokens")),
        # parse_float=Decimal keeps the cost exactly as the server wrote it.
        cost_usd=_decimal(cost) if cost is not None else None,
        cached_tokens=_count(prompt_details.get("cached_tokens")),
        cache_write_tokens=_count(prompt_details.get("cache_write_tokens")),
    )


def _count(value: Any) -> int:
    """Return a token count; -1 for anything that is not a whole number (bool, text, 1.5)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return -1
    try:
        whole = int(value)
    except (ValueError, OverflowError, ArithmeticError):
        return -1
    return whole if whole == value else -1


def _decimal(value: Any) -> Decimal:
    """Return a reported amount as a Decimal, NaN when it is not a number at all."""
    if isinstance(value, bool):
        return Decimal("NaN")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal("NaN")


def _parse_model(entry: Any) -> ModelInfo | None:
    """Return a catalogue entry as a model, None for one that cannot be offered: no id, or prices
    that cannot be budgeted. One bad entry leaves the rest of the catalogue usable."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"].strip():
        return None
    pricing = entry.get("pricing") or {}
    if not isinstance(pricing, dict):
        return None
    read = {
        k: _price_or_none(pricing.get(k) or "0")
        for k in ("prompt", "completion", "request", "internal_reasoning")
    }
    prices = {k: p for k, p in read.items() if p is not None}
    if len(prices) < len(read):
        return None  # a variable price (such as openrouter/auto's -1) cannot be budgeted, nor nonsense
    top = entry.get("top_provider")
    top = top if isinstance(top, dict) else {}
    name = entry.get("name")
    return ModelInfo(
        id=entry["id"],
        name=name if isinstance(name, str) and name.strip() else entry["id"],
        context_length=_window(entry.get("context_length")) or _window(top.get("context_length")),
        max_completion_tokens=_window(top.get("max_completion_tokens")),
        pricing=Pricing(
            **prices,
            cache_read=_price_or_none(pricing.get("input_cache_read")),
            cache_write=_price_or_none(pricing.get("input_cache_write")),
        ),
    )


def _window(value: Any) -> int | None:
    """Return a catalogue's token limit (a context length, a reply cap), None when it gives none a
    model could have: text, a fraction, zero or less, past MAX_TOKENS."""
    count = _count(value)
    return count if 0 < count <= MAX_TOKENS else None


def _price_or_none(value: Any) -> Decimal | None:
    """Return a price that can be budgeted; a missing, malformed, negative (variable) or absurd one
    is unknown."""
    try:
        price = Decimal(str(value)) if value is not None else None
    except InvalidOperation:
        return None
    return price if price is not None and price.is_finite() and 0 <= price <= MAX_PRICE else None


def _untrusted(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what failed the connection, wherever
    the transport wrapped the check's error (aiohttp's own subclasses it, without the reason)."""
    seen: BaseException | None = exc
    refused = None
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            refused = getattr(seen, "verify_message", None) or refused or "certificate verify failed"
        seen = seen.__cause__ or seen.__context__
    return refused


def _error_message(response: httpx.Response, body: bytes) -> str:
    """The server's reason in one line: its JSON error's message, else its text, except a web page,
    whose markup says nothing a person can act on: then the status's name ("Not Found")."""
    try:
        error = json.loads(body).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = None
    text = body.decode(response.encoding or "utf-8", errors="replace")
    if not message and not text.lstrip().startswith("<"):
        message = text
    return " ".join(str(message or response.reason_phrase or response.status_code).split())[:300]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _error_for_status(
    status: int, detail: str, retry_after: float | None, key_setting: str = "OPENROUTER_API_KEY"
) -> ProviderError:
    kind: type[ProviderError]
    if status == 401:
        kind, text = (
            AuthError,
            f"the API key was rejected (401: {detail}); check {key_setting}",
        )
    elif status == 402:
        kind, text = (
            OutOfCredits,
            f"out of credits (402: {detail}); add credits to the account or key",
        )
    elif status == 403:
        kind, text = Moderation, f"the input was flagged by moderation (403: {detail})"
    elif status in (408, 429):
        kind, text = RateLimited, f"rate limited or timed out at the provider ({status}: {detail})"
    elif status >= 500:
        kind, text = ServerError, f"the provider failed ({status}: {detail})"
    else:
        kind, text = BadRequest, f"the provider rejected the request ({status}: {detail})"
    return kind(text, status=status, retry_after=retry_after)
