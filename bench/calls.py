"""CPU per call: what a turn's end costs, from a minimal asyncio client to the whole engine, all
against the same fake OpenRouter in the same run.

Each reader asks for one-word replies one after another on a kept connection, `clients` of them at
once, so each call is little but its fixed part: the request written, the response's head and its
few events read (the role, the word, the finish, the usage, `[DONE]`). The engine runs as many
one-word dialogues, where a call is a turn: the store, the next prompt and the loop check besides.

Dialogues that start together and stream at one pace end every turn together (`scale`'s rows of
dialogues all starting at once), and their turn ends wait for one another on the one event loop:
the last of N waits about N times a turn's end. The last column gives that wait for 300.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx

from bench.chunks import BODY, floor_call, http_client, httpx_lines, provider_stream
from bench.harness import against_floor, engine, fake_server, run_dialogue, spec
from bot.providers.openai_compat import OpenAICompatProvider
from bot.transport import AiohttpTransport, make_client

#: The dialogues whose turn ends arrive together in the last column: issue 13's count per core.
TOGETHER = 300


Call = Callable[[], Awaitable[object]]


async def aiohttp_call(session: aiohttp.ClientSession, base_url: str) -> None:
    """Make one call through aiohttp alone, its body read to its end."""
    async with session.post(f"{base_url}/chat/completions", json=BODY) as response:
        async for _piece in response.content.iter_any():
            pass


async def _cpu_per_call(calls: int, callers: list[Call]) -> float:
    """CPU seconds per call of the callers at once, each making `calls` calls one after another,
    after a first call each (imports, connections) that is not counted."""
    await asyncio.gather(*(call() for call in callers))

    async def each(call: Call) -> None:
        for _ in range(calls):
            await call()

    started = time.process_time()
    await asyncio.gather(*(each(call) for call in callers))
    return (time.process_time() - started) / (len(callers) * calls)


async def _floor(base_url: str, clients: int, calls: int) -> float:
    """The floor: `clients` connections of plain asyncio, each kept for its calls."""
    url = urlsplit(base_url)
    connections = [await asyncio.open_connection(url.hostname, url.port) for _ in range(clients)]
    try:
        callers: list[Call] = [partial(floor_call, r, w, base_url) for r, w in connections]
        return await _cpu_per_call(calls, callers)
    finally:
        for _, writer in connections:
            writer.close()


async def _engine(base_url: str, clients: int, calls: int) -> float:
    """CPU seconds per turn of `clients` one-word dialogues of `calls` turns each, run at once."""
    with tempfile.TemporaryDirectory() as folder:
        async with engine(Path(folder), base_url) as app:
            ids = [(await app.runner.create(spec(-(-calls // 2)))).id for _ in range(clients)]
            started = time.process_time()
            await asyncio.gather(*(run_dialogue(app, i) for i in ids))
            spent = time.process_time() - started
            turns = sum([len(await app.store.list_turns(i)) for i in ids])
    return spent / turns


async def measure(clients: int, calls: int, runs: int = 1) -> list[dict[str, str]]:
    """Return one row per reader: CPU per call (the median of `runs`, taken in turn so that a slow
    moment of the machine falls on every reader alike), against the floor, and what TOGETHER
    turn ends arriving at once take of one core."""
    names = [
        "minimal asyncio client (floor)",
        "aiohttp",
        "httpx over aiohttp (bot/transport.py)",
        "Voices' provider (HTTP, SSE, JSON, events)",
        "Voices end to end: a one-word turn (the store, the next prompt, the loop check)",
    ]
    costs: dict[str, list[float]] = {name: [] for name in names}
    async with fake_server(0.0, 1) as server:
        base = server.base_url
        for _ in range(runs):
            found = [await _floor(base, clients, calls)]
            async with aiohttp.ClientSession() as session:
                callers: list[Call] = [partial(aiohttp_call, session, base)] * clients
                found.append(await _cpu_per_call(calls, callers))
            async with http_client(AiohttpTransport()) as client:
                callers = [partial(httpx_lines, client, base)] * clients
                found.append(await _cpu_per_call(calls, callers))
            async with make_client(httpx.Timeout(60)) as client:  # the engine's own client
                provider = OpenAICompatProvider(client, base, "bench-key")
                callers = [partial(provider_stream, provider)] * clients
                found.append(await _cpu_per_call(calls, callers))
            found.append(await _engine(base, clients, calls))
            for name, cost in zip(names, found, strict=True):
                costs[name].append(cost)
    return [
        {
            "reader": name,
            "calls per run": str(clients * calls),
            "CPU per call": shown,
            "× floor": ratio,
            f"{TOGETHER} at once": f"{cost * TOGETHER * 1e3:.0f} ms",
        }
        for name, cost, shown, ratio in against_floor(costs)
    ]
