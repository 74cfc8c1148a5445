"""Routing personas to providers: a named OpenAI-compatible server with its own URL, key and prices."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from bot.catalogue import Catalogue
from bot.dialogue import DialogueRunner
from bot.errors import InputError
from bot.models import Persona
from bot.providers import Route, Router
from bot.providers.openai_compat import OpenAICompatProvider
from tests.conftest import API_KEY, GLM, OPUS, make_spec, run_all
from tests.fake_openrouter import FakeOpenRouter

LAB_MODELS = [{"id": "llama3.2", "object": "model", "owned_by": "library"}]  # what Ollama's /v1/models says


async def test_a_persona_on_a_named_server_is_served_there_with_its_key_and_prices(
    make_runner, provider, store, clock, sleep, http, server
):
    async with FakeOpenRouter(models=LAB_MODELS) as lab:
        lab_provider = OpenAICompatProvider(http, lab.base_url, "lab-key")
        lab_route = Route(lab_provider, Catalogue(lab_provider, store, timedelta(hours=1), clock))
        default = make_runner(provider).router.default
        runner = DialogueRunner(
            store,
            Router(default, {"lab": lab_route}),
            clock,
            max_rounds=50,
            max_budget=Decimal(10),
            sleep=sleep,
        )
        spec = make_spec(OPUS, GLM, rounds=1)
        local = Persona(
            "Llama",
            "llama3.2",
            "You are a llama.",
            max_tokens=100,
            provider="lab",
            prompt_price=Decimal("0.000001"),
            completion_price=Decimal("0.000002"),
        )
        spec = replace(spec, participants=(spec.participants[0], local))
        dialogue = await runner.create(spec)
        await run_all(runner, dialogue.id)
        turns = await store.list_turns(dialogue.id)
    assert [r.body["model"] for r in server.chat_requests] == [OPUS]
    (request,) = lab.chat_requests
    assert request.body["model"] == "llama3.2" and request.headers["authorization"] == "Bearer lab-key"
    assert request.headers["authorization"] != f"Bearer {API_KEY}"
    # The server reported the cost from its own (empty) catalogue: nothing. Unreported, it is computed.
    assert turns[1].cost_usd == 0 and turns[1].cost_source == "reported"
    stored = (await store.get_dialogue(dialogue.id)).participants[1]
    assert stored.provider == "lab" and stored.completion_price == Decimal("0.000002")


async def test_persona_prices_price_a_free_catalogue(provider, store, clock):
    router = Router(Route(provider, Catalogue(provider, store, timedelta(hours=1), clock)))
    priced = Persona("p", GLM, completion_price=Decimal("0.001"))
    model = await router.model(priced)
    assert model.pricing.completion == Decimal("0.001")
    assert model.pricing.prompt == Decimal("0.0000008")  # the catalogue's, where the persona sets none


def test_an_unconfigured_provider_or_local_model_is_named():
    router = Router(Route(object(), object()))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="names provider 'lab', which is not configured"):
        router.route(Persona("p", "m", provider="lab"))
    with pytest.raises(InputError, match="local models are off here"):
        router.route(Persona("p", "local:default"))
