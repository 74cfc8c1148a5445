"""A real HTTP/1.1 server on loopback that speaks OpenRouter's wire format, for tests and benchmarks.

It serves `GET /api/v1/models` and streaming `POST /api/v1/chat/completions` (SSE with keep-alive
comments, reasoning deltas, a usage-only final chunk, mid-stream errors, dropped connections and
HTTP errors with `Retry-After`). Replies are queued with `enqueue`; with the queue empty it answers
on its own, billing exactly price × tokens from its catalogue. Every request is recorded.

It caches prompts as the providers do. A model with a cache-write price caches only up to messages
marked with `cache_control` (Anthropic's explicit breakpoints); one with only a cache-read price
caches on its own per `session_id` (implicit caching). Usage reports `cached_tokens` and
`cache_write_tokens`, and the cost bills them at the cache prices.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot import eventloop

PROCESSING = ": OPENROUTER PROCESSING"
VOCABULARY = (
    "river stone lantern orchard signal harbor ember meadow copper violin thread compass glacier "
    "pepper saddle mirror quarry falcon velvet anchor timber prism maple tunnel"
).split()

MODELS: list[dict[str, Any]] = [
    {
        "id": "anthropic/claude-opus-4.6",
        "name": "Anthropic: Claude Opus 4.6",
        "context_length": 200000,
        "pricing": {
            "prompt": "0.000005",
            "completion": "0.000025",
            "request": "0",
            "image": "0",
            "input_cache_read": "0.0000005",
            "input_cache_write": "0.00000625",
        },
        "top_provider": {
            "context_length": 200000,
            "max_completion_tokens": 32000,
            "is_moderated": True,
        },
    },
    {
        "id": "z-ai/glm-5",
        "name": "Z.ai: GLM 5",
        "context_length": 202752,
        "pricing": {
            "prompt": "0.0000008",
            "completion": "0.00000256",
            "internal_reasoning": "0.00000256",
            "input_cache_read": "0.00000016",
        },
        "top_provider": {"context_length": 202752, "max_completion_tokens": 131072},
    },
    {
        "id": "tiny/short-context",
        "name": "Tiny",
        "context_length": 700,
        "pricing": {"prompt": "0.000001", "completion": "0.000002"},
        "top_provider": {"context_length": 700, "max_completion_tokens": 400},
    },
    {
        "id": "openrouter/auto",
        "name": "Auto Router",
        "context_length": 2000000,
        "pricing": {"prompt": "-1", "completion": "-1"},
        "top_provider": {},
    },
]


@dataclass
class Reply:
    """One scripted answer to a chat request."""

    text: str = "A scripted reply."
    reasoning: str = ""
    finish_reason: str | None = "stop"
    status: int = 200
    error: dict[str, Any] | None = None  # the JSON error body (status != 200) or mid-stream error
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None  # None: computed from the request and the catalogue
    send_usage: bool = True
    #: Send usage in the chunk that carries finish_reason, not in a chunk of its own after it.
    usage_with_last_choice: bool = False
    keepalives: int = 1
    drop_after_chunks: int | None = None
    #: Cut the connection after this many bytes of the response (head included), wherever that falls.
    drop_after_bytes: int | None = None
    chunk_delay: float = 0.0
    chunk_words: int = 3
    #: Name the call in an X-Generation-Id header (else only the events' `id` does).
    id_header: bool = True
    #: Split the text (and reasoning) every this many characters instead, words or not.
    chunk_chars: int | None = None
    send_done: bool = True
    #: The model the events say answered, when not the one asked for (OpenRouter names the one that did).
    model: str | None = None
    #: Before the reply, this many bytes of one event that never ends (a server that does not speak
    #: the stream format, or streams one unbroken line).
    unended_bytes: int = 0
    #: Hold the reply's words, once the call is accepted, until this is set: a test's moment to act
    #: while the call is in flight, however slowly the machine runs.
    gate: asyncio.Event | None = None


@dataclass
class Recorded:
    """One request as the server saw it, with when it arrived and when its answer ended (monotonic)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    received_at: float = 0.0
    finished_at: float | None = None
    #: The whole URL, when the request came as a proxy receives it ("POST http://host/path").
    proxied_url: str | None = None


class FakeOpenRouter:
    """`async with FakeOpenRouter() as server:` then point a client at `server.base_url`."""

    def __init__(
        self,
        models: list[dict[str, Any]] | None = None,
        default_delay: float = 0.0,
        default_words: int | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ):
        self.models = models if models is not None else MODELS
        self.requests: list[Recorded] = []
        self.default_delay = default_delay
        #: With a number, default replies are that many words streamed one word per chunk (benchmarks).
        self.default_words = default_words
        self._port = port
        #: With a server context, the fake speaks HTTPS, as the real service does.
        self._tls = tls
        self._queue: deque[Reply] = deque()
        self._model_queues: dict[str, deque[Reply]] = {}
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self.reported_costs: list[Decimal] = []
        #: Fixed answers for other paths (method, path) -> (status, JSON body), e.g. a Discord login.
        self.routes: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._idle: set[asyncio.StreamWriter] = set()  # connections waiting for their next request
        #: TCP connections accepted, so a test sees whether its client kept one alive.
        self.connections = 0
        #: What each generation streamed so far and what it cost: `GET /generation?id=` answers from it,
        #: after `lookups_until_ready` 404s (the record is not there at once on the real service).
        self.generations: dict[str, dict[str, Any]] = {}
        self.lookups_until_ready = 0
        self.generation_lookups: list[str] = []
        #: Prompt prefixes cached at explicit breakpoints, and each session's last prompt (implicit).
        self._cached_prefixes: set[str] = set()
        self._sessions: dict[str, list[tuple[str, str]]] = {}

    async def __aenter__(self) -> FakeOpenRouter:
        # A deep backlog: benchmarks open a thousand connections at once.
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self._port, backlog=4096, ssl=self._tls
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Close idle keep-alive connections so every handler ends on EOF, not by cancellation.
        for writer in self._writers:
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        if self._tls is not None:  # by name: the certificate is for localhost
            return f"https://localhost:{port}/api/v1"
        return f"http://127.0.0.1:{port}/api/v1"

    @property
    def open_connections(self) -> int:
        """How many connections are open now (a client that went away has closed its own)."""
        return len(self._writers)

    def close_idle(self) -> int:
        """Close every kept-alive connection waiting for its next request, as a server does once one
        has idled a while. Return how many were closed."""
        idle = list(self._idle)
        for writer in idle:
            writer.close()
        return len(idle)

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next chat requests with these replies, in order."""
        self._queue.extend(replies)

    def enqueue_for(self, model: str, *replies: Reply) -> None:
        """Answer the next chat requests to `model` with these replies, before the common queue."""
        self._model_queues.setdefault(model, deque()).extend(replies)

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # HTTP ------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                self._idle.add(writer)
                request = await _read_request(reader)
                self._idle.discard(writer)
                if request is None:
                    break
                self.requests.append(request)
                keep_open = await self._respond(request, writer)
                request.finished_at = time.monotonic()
                if not keep_open:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except RuntimeError:
            # uvloop's answer to a write on a connection the client has closed (a worker killed
            # mid-reply, a stop) where asyncio's is silence: the client left, as above.
            if not writer.is_closing():
                raise
        finally:
            writer.close()
            self._writers.discard(writer)
            self._idle.discard(writer)
            self._handlers.discard(task)

    async def _respond(self, request: Recorded, writer: asyncio.StreamWriter) -> bool:
        if request.method == "GET" and request.path == "/api/v1/models":
            await _send_json(writer, 200, {"data": self.models})
            return True
        if request.method == "POST" and request.path == "/api/v1/chat/completions":
            assert request.body is not None
            own = self._model_queues.get(request.body["model"])
            if own:
                reply = own.popleft()
            else:
                reply = self._queue.popleft() if self._queue else self._default_reply(request)
            return await self._chat(request, reply, writer)
        if request.method == "GET" and request.path.startswith("/api/v1/generation?"):
            await self._generation(request, writer)
            return True
        if request.method == "GET" and request.path == "/_stats":
            await _send_json(writer, 200, self.stats())
            return True
        status, body = self.routes.get((request.method, request.path), (404, {"error": {"code": 404}}))
        await _send_json(writer, status, body)
        return True

    async def _generation(self, request: Recorded, writer: asyncio.StreamWriter) -> None:
        generation_id = parse_qs(urlsplit(request.path).query).get("id", [""])[0]
        self.generation_lookups.append(generation_id)
        record = self.generations.get(generation_id)
        if record is None or self.lookups_until_ready > 0:
            self.lookups_until_ready = max(0, self.lookups_until_ready - 1)
            await _send_json(writer, 404, {"error": {"code": 404, "message": "Generation not found"}})
            return
        pricing = next((m.get("pricing", {}) for m in self.models if m["id"] == record["model"]), {})
        # The first answer is the bill: a cancelled stream may still be flushing words into a closed
        # connection afterwards, as a real one would be cut off mid-token.
        cost = record.setdefault(
            "total_cost",
            record["prompt_tokens"] * Decimal(pricing.get("prompt", "0"))
            + record["streamed"] * Decimal(pricing.get("completion", "0")),
        )
        body = {
            "data": {
                "id": generation_id,
                "model": record["model"],
                "total_cost": cost,
                "tokens_completion": record["streamed"],
                "cancelled": not record["finished"],
            }
        }
        payload = _usage_json(body).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        writer.write(head.encode() + payload)
        await writer.drain()

    def stats(self) -> dict[str, Any]:
        """Return each chat request's timing and session, the exact sum of reported costs, and the
        CPU seconds this process has used (a benchmark's provider share)."""
        return {
            "cpu": time.process_time(),
            "requests": [
                [r.received_at, r.finished_at, (r.body or {}).get("session_id")] for r in self.chat_requests
            ],
            "reported_cost_sum": str(sum(self.reported_costs, Decimal(0))),
        }

    def _default_reply(self, request: Recorded) -> Reply:
        assert request.body is not None
        turn = len(self.chat_requests)
        speaker = request.body["model"]
        if self.default_words is not None:
            words = " ".join(
                VOCABULARY[(turn * 7 + i * 3) % len(VOCABULARY)] for i in range(self.default_words)
            )
            return Reply(
                text=f"{speaker}: {words}", chunk_delay=self.default_delay, chunk_words=1, keepalives=0
            )
        # Different words every turn, as a healthy conversation has (the same reply each time would
        # rightly be noticed as a loop).
        words = " ".join(VOCABULARY[(turn * 7 + i * 3) % len(VOCABULARY)] for i in range(8))
        return Reply(text=f"Reply {turn} from {speaker}: {words}.", chunk_delay=self.default_delay)

    async def _chat(self, request: Recorded, reply: Reply, writer: asyncio.StreamWriter) -> bool:
        if reply.status != 200:
            await _send_json(writer, reply.status, reply.error or {}, reply.headers)
            return True
        generation = f"gen-{next(self._ids)}"
        assert request.body is not None
        model = request.body["model"]
        if reply.drop_after_bytes is not None:
            writer = _Cutting(writer, reply.drop_after_bytes)  # type: ignore[assignment]
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            + (f"X-Generation-Id: {generation}\r\n" if reply.id_header else "")
            + "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            + "\r\n"
        )
        writer.write(head.encode())
        for _ in range(reply.keepalives):
            await _chunk(writer, f"{PROCESSING}\n\n")
        for start in range(0, reply.unended_bytes, 2**16):
            piece = b"x" * min(2**16, reply.unended_bytes - start)
            writer.write(b"%x\r\n%s\r\n" % (len(piece), b"data: " + piece[6:] if start == 0 else piece))
            await writer.drain()
        if reply.gate is not None:
            await reply.gate.wait()
        base = {
            "id": generation,
            "object": "chat.completion.chunk",
            "model": reply.model or model,
            "provider": "FakeProvider",
        }
        pieces = [("reasoning", p) for p in _split(reply.reasoning, reply.chunk_words, reply.chunk_chars)]
        pieces += [("content", p) for p in _split(reply.text, reply.chunk_words, reply.chunk_chars)]
        record = {"model": model, "streamed": 0, "finished": False}
        record["prompt_tokens"] = sum(len(text_of(m["content"])) for m in request.body["messages"]) // 4 + 5
        self.generations[generation] = record
        for index, (kind, piece) in enumerate(pieces):
            if reply.drop_after_chunks is not None and index >= reply.drop_after_chunks:
                writer.transport.abort()  # mid-body, without the chunked terminator
                return False
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            delta = {"role": "assistant", kind: piece}
            await _event(writer, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            record["streamed"] += len(piece.split())
        if reply.drop_after_chunks is not None:
            writer.transport.abort()
            return False
        if reply.error is not None:
            await _event(
                writer,
                {
                    **base,
                    "error": reply.error,
                    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                },
            )
            await _end(writer)
            return True
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]}
        if reply.send_usage and reply.usage_with_last_choice:  # as some servers do
            last["usage"] = reply.usage or self._usage(request, reply)
            await _chunk(writer, "data: " + _usage_json(last) + "\n\n")
        else:
            await _event(writer, last)
        if reply.send_usage and not reply.usage_with_last_choice:
            usage = reply.usage or self._usage(request, reply)
            await _chunk(writer, "data: " + _usage_json({**base, "choices": [], "usage": usage}) + "\n\n")
        if reply.send_done:
            await _chunk(writer, "data: [DONE]\n\n")
        await _end(writer)
        record["finished"] = True
        return True

    def _usage(self, request: Recorded, reply: Reply) -> dict[str, Any]:
        """Bill like OpenRouter would: the catalogue's prices times the tokens, cache included."""
        assert request.body is not None
        messages = [(m["role"], text_of(m["content"])) for m in request.body["messages"]]
        prompt = sum(len(text) for _, text in messages) // 4 + 5
        reasoning = len(reply.reasoning.split())
        completion = len(reply.text.split()) + reasoning
        pricing = next((m.get("pricing", {}) for m in self.models if m["id"] == request.body["model"]), {})
        cached, written = self._cache(request.body, messages, pricing)
        price = {k: Decimal(pricing.get(k, "0")) for k in ("prompt", "completion")}
        read_price = Decimal(pricing.get("input_cache_read", price["prompt"]))
        write_price = Decimal(pricing.get("input_cache_write", price["prompt"]))
        cost = (
            (prompt - cached - written) * price["prompt"]
            + cached * read_price
            + written * write_price
            + completion * price["completion"]
        )
        self.reported_costs.append(cost)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
            "cost": cost,
        }

    def _cache(
        self, body: dict[str, Any], messages: list[tuple[str, str]], pricing: dict[str, str]
    ) -> tuple[int, int]:
        """Return (tokens read from the cache, tokens written to it) for this prompt, and remember it."""

        def tokens(upto: int) -> int:
            return sum(len(text) for _, text in messages[:upto]) // 4

        if "input_cache_write" in pricing:
            marks = [i for i, m in enumerate(body["messages"]) if _marked(m)]
            if not marks:
                return 0, 0
            keys = {i: json.dumps(messages[: i + 1]) for i in marks}
            hits = [i for i in marks if keys[i] in self._cached_prefixes]
            cached = tokens(max(hits) + 1) if hits else 0
            written = tokens(marks[-1] + 1) - cached
            self._cached_prefixes.update(keys.values())
            return cached, written
        session = body.get("session_id")
        if "input_cache_read" in pricing and session:
            previous = self._sessions.get(session, [])
            common = 0
            while common < min(len(previous), len(messages)) and previous[common] == messages[common]:
                common += 1
            self._sessions[session] = messages
            return tokens(common), 0
        return 0, 0


class _Cutting:
    """A writer that sends the first `limit` bytes it is given, then drops the connection."""

    def __init__(self, writer: asyncio.StreamWriter, limit: int):
        self._writer = writer
        self._left = limit
        self.transport = writer.transport

    def write(self, data: bytes) -> None:
        if self._left > 0:
            self._writer.write(data[: self._left])
        self._left -= len(data)

    async def drain(self) -> None:
        await self._writer.drain()
        if self._left <= 0:
            self.transport.abort()
            raise ConnectionResetError("dropped on purpose")


def text_of(content: str | list[dict[str, Any]]) -> str:
    """Return a message's text, whether sent as a string or as content parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Return messages as role and text only (content parts and cache marks flattened)."""
    return [{"role": m["role"], "content": text_of(m["content"])} for m in messages]


def _marked(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any("cache_control" in part for part in content)


def _usage_json(obj: dict[str, Any]) -> str:
    """Write JSON with Decimal costs as exact numbers, as the real server writes them."""
    return json.dumps(obj, default=lambda d: f"@@{d}@@").replace('"@@', "").replace('@@"', "")


def _split(text: str, words: int, chars: int | None = None) -> list[str]:
    if not text:
        return []
    if chars is not None:
        return [text[i : i + chars] for i in range(0, len(text), chars)]
    parts = text.split(" ")
    return [
        " ".join(parts[i : i + words]) + (" " if i + words < len(parts) else "")
        for i in range(0, len(parts), words)
    ]


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    line = await reader.readline()
    if not line:
        return None
    received = time.monotonic()
    method, path, _ = line.decode().split(" ", 2)
    proxied_url = None
    if path.startswith("http://"):  # asked as a proxy: serve it all the same, and say so
        proxied_url, path = path, "/" + path.split("/", 3)[3]
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    return Recorded(
        method, path, headers, json.loads(raw) if raw else None, received, proxied_url=proxied_url
    )


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        f"HTTP/1.1 {status} Status\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode()
        + payload
    )
    await writer.drain()


async def _event(writer: asyncio.StreamWriter, chunk: dict[str, Any]) -> None:
    await _chunk(writer, f"data: {json.dumps(chunk)}\n\n")


async def _chunk(writer: asyncio.StreamWriter, text: str) -> None:
    data = text.encode()
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _end(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def main() -> None:
    """Serve on loopback until killed (benchmarks run the server in a process of its own)."""
    import argparse

    parser = argparse.ArgumentParser(description="A fake OpenRouter on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between streamed words")
    parser.add_argument("--words", type=int, default=None, help="words per default reply")
    args = parser.parse_args()

    async def serve() -> None:
        async with FakeOpenRouter(
            default_delay=args.delay, default_words=args.words, port=args.port
        ) as server:
            print(server.base_url, flush=True)
            await asyncio.Event().wait()

    # On uvloop where installed: a benchmark times each request as this process sees it, so its own
    # loop's lag would be counted as the reader's (docs/benchmarks.md §2).
    eventloop.run(serve())


if __name__ == "__main__":
    main()
