"""The health and metrics endpoint of `voices bot`: scraped over real HTTP while a dialogue runs in
SimCord, and after it ends."""

from __future__ import annotations

import logging
import re
import socket

import httpx
import pytest

from tests.cogs.test_voices_cog import hold_second_turn, start
from tests.conftest import API_KEY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


PORT = free_port()


def scraper(base: str) -> httpx.AsyncClient:
    """A client that closes each connection, as a health check does: the server's handler then ends
    with its answer instead of waiting for a next request (which SimCord would count as pending)."""
    return httpx.AsyncClient(base_url=base, timeout=10, headers={"Connection": "close"})


def value(exposition: str, name: str, **labels: str) -> float:
    """Return a sample's value from Prometheus' text format (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the format sorts them
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", exposition, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.settings(metrics_port=PORT)
async def test_metrics_follow_a_dialogue_and_health_says_ok(world):
    base = f"http://127.0.0.1:{PORT}"
    async with scraper(base) as http:
        healthy = await http.get("/healthz")
        assert healthy.status_code == 200 and healthy.text == "ok\n"

        hold_second_turn(world)  # the second call meets a 429 and waits: the dialogue is mid-way
        await start(world, rounds=1)
        await world.env.settle()
        during = (await http.get("/metrics")).text
        assert value(during, "voices_dialogues_running") == 1
        assert value(during, "voices_leases_held") == 1
        assert value(during, "voices_turns_total", model="anthropic/claude-opus-4.6") == 1
        assert value(during, "voices_tokens_total", model="anthropic/claude-opus-4.6", kind="completion") > 0
        assert value(during, "voices_provider_errors_total", kind="RateLimited") == 1
        assert value(during, "voices_discord_requests_total", kind="webhook") >= 1
        assert value(during, "voices_discord_requests_total", kind="bot") >= 2  # the thread, the status

        await world.finish(1)
        after = (await http.get("/metrics")).text
        spent = (await world.bot.services.store.get_dialogue(1)).totals.spent_usd
        assert value(after, "voices_dialogues_running") == 0
        assert value(after, "voices_dialogues_finished_total", reason="max_rounds") == 1
        assert value(after, "voices_turns_total", model="z-ai/glm-5") == 1
        models = ("anthropic/claude-opus-4.6", "z-ai/glm-5")
        exported = sum(value(after, "voices_spend_usd_total", model=m) for m in models)
        assert exported == pytest.approx(float(spent))
        assert value(after, "voices_relay_gap_seconds_count") == 1  # one speaker handed to the next
        assert value(after, "voices_token_to_discord_seconds_count") >= 2  # every turn reached Discord
        assert API_KEY not in after


@pytest.mark.settings(metrics_port=PORT)
async def test_health_is_503_naming_what_is_down(world):
    async with scraper(f"http://127.0.0.1:{PORT}") as http:
        world.bot.services.store._backend._conn.close()  # the database stops answering
        down = await http.get("/healthz")
    assert down.status_code == 503
    assert down.text == "the database does not answer (ProgrammingError)\n"


async def test_429s_that_discord_py_waits_out_are_counted_from_its_log(world):
    """discord.py retries a 429 itself and reports it only in its log; the bot counts those lines."""
    metrics = world.bot.services.metrics
    logging.getLogger("discord.http").warning(
        "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.", "POST", "/x", 1.0
    )
    logging.getLogger("discord.webhook.async_").warning(
        "Webhook ID %s is rate limited. Retrying in %.2f seconds.", 1, 2.0
    )
    logging.getLogger("discord.http").warning("something else entirely")
    assert value(metrics.exposition().decode(), "voices_discord_rate_limited_total") == 2
