"""A provider that lies, over the real wire format on loopback: costs negative, huge, NaN, infinite or
text; usage above max_tokens, past any model's, or missing; prices that rise under us; surrogates
and escape sequences in text and reasoning; connections dropped at random bytes. Whatever it does,
spent is a finite, non-negative sum of what was recorded, never above the budget unless the
provider billed above its published prices (and then the stop says so), the database opens, and
no turn is lost."""

from __future__ import annotations

import asyncio
import copy
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.console import dialogue_table
from bot.errors import InputError
from bot.events import Ended
from bot.models import NoteKind, StopReason, TurnStatus
from bot.providers.openai_compat import OpenAICompatProvider
from bot.retry import RetryPolicy
from bot.store import Store
from bot.transcript import render_json, render_markdown
from bot.transport import make_client
from tests.conftest import API_KEY, RecordingSleep, SteppingClock, build_runner, make_spec
from tests.fake_openrouter import FakeOpenRouter, Reply

COSTS = st.sampled_from(
    [None, -1, -0.0001, float("nan"), float("inf"), float("-inf"), 1e30, 0.5, "abc", "", [1], 0, 0.00001]
)
TEXT = st.lists(
    st.sampled_from(
        ["word ", "\ud800", "\udfff", "\x1b]52;c;aGk=\x07", "\x1b[2J", "**beta:**\n", "é", "\n", "<!--"]
    ),
    max_size=8,
).map("".join)


@st.composite
def replies(draw: Any) -> Reply:
    usage: dict[str, Any] | None = None
    kind = draw(st.sampled_from(["honest", "lying", "over", "none", "dropped"]))
    if kind == "lying":
        usage = {"prompt_tokens": draw(st.sampled_from([40, -5, "x"])), "completion_tokens": 12}
        usage["cost"] = draw(COSTS)
    elif kind == "over":  # past max_tokens; or past any model, a Decimal's 28 digits, 64-bit integers
        usage = {"prompt_tokens": 40, "completion_tokens": draw(st.sampled_from([100_000, 10**30]))}
    return Reply(
        text=draw(TEXT) or "fallback words",
        reasoning=draw(TEXT),
        usage=usage,
        send_usage=kind != "none",
        drop_after_bytes=draw(st.integers(0, 900)) if kind == "dropped" else None,
    )


@settings(
    max_examples=int(os.environ.get("VOICES_PROPERTY_EXAMPLES", "100")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(script=st.lists(replies(), min_size=1, max_size=10), rounds=st.integers(1, 4), rise=st.booleans())
def test_no_lie_of_a_provider_breaks_the_cap_the_books_or_the_database(
    tmp_path_factory, script, rounds, rise
):
    asyncio.run(_attack(Path(tmp_path_factory.mktemp("hostile")), script, rounds, rise))


async def _attack(folder: Path, script: list[Reply], rounds: int, rise: bool) -> None:
    budget = Decimal("0.02")
    async with FakeOpenRouter() as server, make_client(httpx.Timeout(5)) as http:
        server.models = copy.deepcopy(server.models)
        server.enqueue(*script)
        async with Store.open(folder / "v.db") as store:
            provider = OpenAICompatProvider(http, server.base_url, API_KEY)
            runner = build_runner(
                store, provider, SteppingClock(), RecordingSleep(), Decimal(1), RetryPolicy(attempts=2)
            )
            try:
                dialogue = await runner.create(make_spec(rounds=rounds, budget=str(budget), max_tokens=100))
            except InputError:
                return
            if rise:  # the catalogue is cached; the provider now bills ten times its prices
                for model in server.models:
                    model["pricing"] = {k: str(Decimal(v) * 10) for k, v in model["pricing"].items()}
            events = [e async for e in runner.run(dialogue.id)]
        assert isinstance(events[-1], Ended)
    # The database opens again, and every view of it works.
    async with Store.open(folder / "v.db") as store:
        final, turns, notes = await store.history(dialogue.id)
        dialogue_table(await store.list_dialogues())
        render_json(final, turns, notes)
        markdown = render_markdown(final, turns, notes)
    spent = final.totals.spent_usd
    assert spent.is_finite() and spent >= 0
    assert spent == sum((t.cost_usd for t in turns), Decimal(0)) + sum(
        (n.cost_usd for n in notes), Decimal(0)
    )
    assert all(t.cost_usd.is_finite() and t.cost_usd >= 0 for t in turns)
    over = any(n.kind is NoteKind.BILLING and "above the" in n.text for n in notes)
    if not over:
        assert spent <= budget
    elif spent > budget:
        assert final.stop_reason is StopReason.BUDGET and "billed" in (final.stop_detail or "")
    # No turn lost: committed in order, texts whole and encodable, no call left in flight.
    assert [t.seq for t in turns] == list(range(len(turns)))
    for turn in turns:
        turn.text.encode()
        turn.reasoning.encode()
        assert turn.status is not TurnStatus.OK or turn.text.strip()
    assert "\x1b" not in markdown
