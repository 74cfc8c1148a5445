"""Against a real OpenAI-compatible server nobody here wrote: llama-cpp-python's own, started on
loopback with the packaged model. It streams, refuses, goes away, and reports no usage in a stream,
so Voices counts the tokens with the server's tokenizer (marked ~) and charges a priced call its
worst case: the cap holds without usage."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from bot.catalogue import Catalogue
from bot.control import Control
from bot.dialogue import DialogueRunner
from bot.errors import AuthError
from bot.events import Delta, Ended, TurnStarted
from bot.models import NoteKind, StopReason, TurnStatus
from bot.providers import Route, Router
from bot.providers.local import DEFAULT, local_available, model_path
from bot.providers.openai_compat import OpenAICompatProvider
from bot.providers.scripted import ScriptedProvider
from bot.retry import RetryPolicy
from bot.transcript import render_markdown
from tests.conftest import make_spec

SERVER_EXTRA = all(
    importlib.util.find_spec(m) for m in ("uvicorn", "fastapi", "sse_starlette", "starlette_context")
)
pytestmark = pytest.mark.skipif(
    not (local_available() and SERVER_EXTRA),
    reason="needs the voices[local] extra (llama-cpp-python with its server)",
)
ALIAS = "gemma-3-270m"


def start_server(*options: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama-cpp-python's server on a free loopback port; return it and its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model_path(DEFAULT)),
            "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
            # Larger micro-batches crash llama_decode in this build on this machine (see local.py).
            "--n_ubatch", "1", *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):  # noqa: S310 - loopback
                return process, base_url
        except urllib.error.HTTPError:  # it answers (a 401 without the key): it is up
            return process, base_url
        except OSError:
            time.sleep(0.2)
    process.kill()
    process.wait()
    raise RuntimeError("llama-cpp-python's server did not start within a minute")


@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    process, base_url = start_server()
    yield base_url
    process.terminate()
    process.wait(timeout=30)


def runner_on(
    base_url: str, http: httpx.AsyncClient, store, clock, sleep, key: str | None = None
) -> DialogueRunner:
    """The engine with a named server 'llama' at `base_url`, as a [providers.llama] table makes it."""
    server = OpenAICompatProvider(
        http, base_url, key, generation_lookups=False, key_setting="the api_key of [providers.llama]"
    )
    named = Route(server, Catalogue(server, store, timedelta(hours=1), clock))
    scripted = ScriptedProvider([])
    default = Route(scripted, Catalogue(scripted, store, timedelta(hours=1), clock))
    return DialogueRunner(
        store,
        Router(default, {"llama": named}),
        clock,
        max_rounds=10,
        max_budget=Decimal(1),
        retry=RetryPolicy(attempts=2),
        sleep=sleep,
    )


def on_llama(spec, priced: bool):
    prices = {"prompt_price": Decimal("0.000001"), "completion_price": Decimal("0.000002")} if priced else {}
    seats = tuple(
        replace(p, model=ALIAS, provider="llama", max_tokens=16, **prices) for p in spec.participants
    )
    return replace(spec, participants=seats)


async def test_a_priced_dialogue_is_charged_its_worst_case_with_tokens_counted_by_the_server(
    llama, http, store, clock, sleep
):
    runner = runner_on(llama, http, store, clock, sleep)
    dialogue = await runner.create(on_llama(make_spec(rounds=1, budget="0.05"), priced=True))
    events = [e async for e in runner.run(dialogue.id)]
    final = events[-1].dialogue
    assert final.stop_reason is StopReason.MAX_ROUNDS
    turns = await store.list_turns(dialogue.id)
    reserved = [e.reserved for e in events if isinstance(e, TurnStarted)]
    assert [t.cost_usd for t in turns] == reserved and all(r > 0 for r in reserved)
    assert all(t.usage.estimated and t.usage.prompt_tokens > 0 for t in turns)
    assert final.totals.spent_usd == sum(reserved) <= Decimal("0.05")
    notes = [n for n in await store.list_notes(dialogue.id) if n.kind is NoteKind.BILLING]
    assert len(notes) == 2  # once for each speaker, not once a turn
    assert "counted by the server's tokenizer" in notes[0].text and "upper bound" in notes[0].text
    assert "prompt=~" in render_markdown(*await store.history(dialogue.id))


async def test_free_personas_on_it_cost_nothing_and_still_count_their_tokens(
    llama, http, store, clock, sleep
):
    runner = runner_on(llama, http, store, clock, sleep)
    dialogue = await runner.create(on_llama(make_spec(rounds=1), priced=False))
    events = [e async for e in runner.run(dialogue.id)]
    turns = await store.list_turns(dialogue.id)
    assert events[-1].dialogue.totals.spent_usd == 0
    assert all(t.cost_usd == 0 and t.usage.estimated and t.usage.prompt_tokens > 0 for t in turns)
    (note, *_) = [n for n in await store.list_notes(dialogue.id) if n.kind is NoteKind.BILLING]
    assert note.text.endswith("it costs nothing")


async def test_a_stop_cuts_its_reply_off_at_once(llama, http, store, clock, sleep):
    runner = runner_on(llama, http, store, clock, sleep)
    spec = on_llama(make_spec(rounds=2), priced=True)
    spec = replace(spec, participants=tuple(replace(p, max_tokens=400) for p in spec.participants))
    dialogue = await runner.create(spec)
    control = Control()
    stopped_at = None
    async for event in runner.run(dialogue.id, control):
        if isinstance(event, Delta) and stopped_at is None:
            control.stop(now=True)
            stopped_at = time.monotonic()
        if isinstance(event, Ended):
            ended = event.dialogue
    assert stopped_at is not None and time.monotonic() - stopped_at < 1.0
    (turn,) = await store.list_turns(dialogue.id)
    assert ended.stop_reason is StopReason.USER_STOP and turn.status is TurnStatus.CANCELLED
    assert turn.cost_usd > 0  # charged its worst case: the server keeps no record to ask


async def test_a_prompt_past_its_context_fails_the_dialogue_in_one_line(llama, http, store, clock, sleep):
    """It answers 200, then breaks the stream: retried, then one line, nothing spent on a free seat."""
    runner = runner_on(llama, http, store, clock, sleep)
    spec = on_llama(make_spec(rounds=1, opening="word " * 3000), priced=False)  # past its 1,024
    dialogue = await runner.create(spec)
    final = [e async for e in runner.run(dialogue.id)][-1].dialogue
    assert final.stop_reason is StopReason.PROVIDER_ERROR and "\n" not in final.stop_detail
    assert final.totals.spent_usd == 0 and not await store.list_turns(dialogue.id)


async def test_a_key_it_refuses_is_one_line_naming_where_the_key_is_set(http, store, clock, sleep):
    process, base_url = start_server("--api_key", "the-right-key")
    try:
        runner = runner_on(base_url, http, store, clock, sleep, key="a-wrong-key")
        with pytest.raises(AuthError) as refused:  # its catalogue is asked first, before any call
            await runner.create(on_llama(make_spec(rounds=1), priced=True))
    finally:
        process.kill()
        process.wait()
    message = str(refused.value)
    assert message.startswith("the API key was rejected (401") and "\n" not in message
    assert message.endswith("check the api_key of [providers.llama]") and "a-wrong-key" not in message


async def test_a_server_that_goes_away_mid_reply_fails_the_dialogue_in_one_line(http, store, clock, sleep):
    process, base_url = start_server()
    try:
        runner = runner_on(base_url, http, store, clock, sleep)
        spec = on_llama(make_spec(rounds=1), priced=True)
        spec = replace(spec, participants=tuple(replace(p, max_tokens=400) for p in spec.participants))
        dialogue = await runner.create(spec)
        async for event in runner.run(dialogue.id):
            if isinstance(event, Delta) and process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait)
            if isinstance(event, Ended):
                final = event.dialogue
    finally:
        if process.poll() is None:
            process.kill()
    assert final.stop_reason is StopReason.PROVIDER_ERROR and "\n" not in final.stop_detail
    assert final.stop_detail.startswith(("cannot reach", "the connection to", "the stream from"))
    assert final.totals.spent_usd <= final.limits.budget_usd
    assert not await store.calls_in_flight(dialogue.id)
