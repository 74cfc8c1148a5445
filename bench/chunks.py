"""CPU per streamed chunk: a minimal asyncio SSE reader (the floor), httpx's default transport and
the one Voices uses, Voices' provider, and the whole engine with and without the terminal view, all
against the same fake OpenRouter in the same run.

Each reader runs `streams` streams at once, each one reply of `words` chunks (one word, one SSE
event, one socket read); the server runs in a process of its own, so only the reader's CPU counts.
The engine reads a stream at its pace (`EngineConfig.read_pace`), what came meanwhile in one
piece; it is also run reading each event as it comes, as every other reader here does.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.console import Console

from bench.harness import MODELS, against_floor, engine, fake_server, run_dialogue, spec
from bot.console import DialogueView
from bot.providers.base import ChatRequest, TextDelta
from bot.providers.openai_compat import OpenAICompatProvider
from bot.transport import AiohttpTransport

BODY = {"model": MODELS[1], "messages": [{"role": "user", "content": "Go."}], "stream": True}


async def floor(base_url: str) -> int:
    """Read one stream with nothing but asyncio: HTTP/1.1 chunked framing, SSE events, one JSON
    decode each. Return the text chunks read."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    chunks = await floor_call(reader, writer, base_url)
    writer.close()
    return chunks


async def floor_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, base_url: str) -> int:
    """Ask for one reply on an open connection and read it to its end as `floor` does; the
    connection is left open for the next. Return the text chunks read."""
    url = urlsplit(base_url)
    payload = json.dumps(BODY).encode()
    writer.write(
        f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await reader.readuntil(b"\r\n\r\n")
    chunks, pending = 0, b""
    while True:
        size = int((await reader.readline()).strip(), 16)
        if size == 0:
            break
        pending += (await reader.readexactly(size + 2))[:-2]
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if event.startswith(b"data: {"):
                delta = json.loads(event[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    chunks += 1
    await reader.readexactly(2)  # the blank line after the last, empty chunk
    return chunks


async def httpx_lines(client: httpx.AsyncClient, base_url: str) -> int:
    """Read one stream as httpx's documentation shows: aiter_lines and a JSON decode per event."""
    chunks = 0
    async with client.stream("POST", f"{base_url}/chat/completions", json=BODY) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    chunks += 1
    return chunks


async def provider_stream(provider: OpenAICompatProvider) -> int:
    """Read one stream through the provider Voices uses (events, usage, errors, all of it)."""
    request = ChatRequest(model=MODELS[1], messages=[{"role": "user", "content": "Go."}], max_tokens=4000)
    return sum([1 async for event in provider.stream(request) if isinstance(event, TextDelta)])


async def _cpu_per_chunk(streams: int, one: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    await one()  # warm: imports, the first connection
    started = time.process_time()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    return (time.process_time() - started) / max(1, sum(counts)), sum(counts)


def http_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """A client of its own for each reader, so none inherits another's pooled connections."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=60, limits=limits, transport=transport)


async def _engine(
    base_url: str, dialogues: int, view: bool, read_pace: float | None = None
) -> tuple[float, int]:
    """CPU per chunk of `dialogues` one-round dialogues run at once through the whole engine; with
    `view`, each shown in the terminal view (to a console that writes nowhere), as `voices run` is;
    with `read_pace`, streams read at that pace rather than the engine's own."""
    with tempfile.TemporaryDirectory() as folder:
        async with engine(Path(folder), base_url, read_pace) as app:
            ids = [(await app.runner.create(spec(1))).id for _ in range(dialogues)]

            async def shown(dialogue_id: int) -> None:
                screen = DialogueView(Console(file=io.StringIO(), width=100, soft_wrap=True))
                async for event in app.runner.run(dialogue_id):
                    screen.show(event)
                screen.flush()

            started = time.process_time()
            await asyncio.gather(*((shown if view else partial(run_dialogue, app))(i) for i in ids))
            spent = time.process_time() - started
            chunks = 0
            for dialogue_id in ids:
                chunks += sum(len(t.text.split()) for t in await app.store.list_turns(dialogue_id))
    return spent / chunks, chunks


async def measure(streams: int, words: int, delay: float, runs: int = 1) -> list[dict[str, str]]:
    """Return one row per reader: CPU per chunk (the median of `runs`, taken in turn so that a
    slow moment of the machine falls on every reader alike), and against the floor."""
    names = [
        "minimal asyncio SSE reader (floor)",
        "httpx, default transport, aiter_lines",
        "httpx over aiohttp (bot/transport.py), aiter_lines",
        "Voices' provider (HTTP, SSE, JSON, events)",
        "Voices end to end (engine, events, store; no front end)",
        "Voices end to end, shown in the terminal view",
        "Voices end to end, no front end, each event read as it comes",
        "Voices end to end, terminal view, each event read as it comes",
    ]
    costs: dict[str, list[float]] = {name: [] for name in names}
    counts: dict[str, int] = {}
    async with fake_server(delay, words) as server:
        base = server.base_url
        for _ in range(runs):
            found: list[tuple[float, int]] = [await _cpu_per_chunk(streams, partial(floor, base))]
            async with http_client() as client:
                found.append(await _cpu_per_chunk(streams, partial(httpx_lines, client, base)))
            async with http_client(AiohttpTransport()) as client:
                found.append(await _cpu_per_chunk(streams, partial(httpx_lines, client, base)))
            async with http_client(AiohttpTransport()) as client:
                provider = OpenAICompatProvider(client, base, "bench-key")
                found.append(await _cpu_per_chunk(streams, partial(provider_stream, provider)))
            # As many dialogues as streams, so the engine reads as many at once as the others.
            found.append(await _engine(base, streams, view=False))
            found.append(await _engine(base, streams, view=True))
            found.append(await _engine(base, streams, view=False, read_pace=0.0))
            found.append(await _engine(base, streams, view=True, read_pace=0.0))
            for name, (cost, count) in zip(names, found, strict=True):
                costs[name].append(cost)
                counts[name] = count
    return [
        {"reader": name, "chunks per run": str(counts[name]), "CPU per chunk": shown, "× floor": ratio}
        for name, _, shown, ratio in against_floor(costs)
    ]
