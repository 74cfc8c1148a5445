"""The persona library file and ad-hoc personas from bare model ids."""

from __future__ import annotations

import pytest

from bot.errors import InputError
from bot.personas import load_personas, resolve_persona
from config.settings import CONFIG_DIR


def test_shipped_library_loads_with_names_and_models():
    library = load_personas(CONFIG_DIR / "personas.toml")
    assert library["claude"].name == "Claude"
    assert library["claude"].model == "anthropic/claude-opus-4.6"
    assert library["glm"].reasoning_effort == "low"


def test_a_bare_model_id_becomes_a_persona_named_after_the_model():
    persona = resolve_persona("z-ai/glm-5", {}, max_tokens=900)
    assert (persona.name, persona.model, persona.max_tokens) == ("glm-5", "z-ai/glm-5", 900)


def test_a_library_persona_keeps_its_own_max_tokens(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[sage]\nmodel = "x/y"\nmax_tokens = 64\n[fool]\nmodel = "x/z"\n')
    library = load_personas(path)
    assert resolve_persona("sage", library, 900).max_tokens == 64
    assert resolve_persona("fool", library, 900).max_tokens == 900
    assert resolve_persona("fool", library, 900).name == "fool"


def test_a_name_that_is_neither_persona_nor_model_lists_the_personas(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[sage]\nmodel = "x/y"\n')
    with pytest.raises(InputError, match=r"'bard' is neither a persona \(sage\) nor a model id"):
        resolve_persona("bard", load_personas(path), 900)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sage\nmodel=1", "not valid TOML"),
        ('[sage]\nsystem_prompt = "x"\n', "persona 'sage'.*model"),
        ('[sage]\nmodel = "x/y"\ntemperature = 3\n', "temperature"),
        ('[sage]\nmodel = "x/y"\nreasoning_effort = "huge"\n', "reasoning_effort"),
        ('[sage]\nmodel = "x/y"\ncolour = "red"\n', "colour"),
        ('[sage]\nmodel = "x/y"\ncompletion_price = "1e30"\n', "completion_price"),
        ('[sage]\nmodel = "x/y"\nprompt_price = "NaN"\n', "prompt_price"),
        # Discord refuses every post with an avatar it cannot fetch: the voice would never speak.
        (
            '[sage]\nmodel = "x/y"\navatar_url = "sage.png"\n',
            "avatar_url: must start with http:// or https://",
        ),
        ('[sage]\nmodel = "x/y"\navatar_url = "https:///sage.png"\n', "avatar_url: names no host"),
        ('[sage]\nmodel = "x/y"\navatar_url = "https://a.io/my sage.png"\n', "avatar_url: holds white space"),
    ],
)
def test_a_bad_library_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        load_personas(path)
    assert "\n" not in str(caught.value)


def test_a_missing_library_names_the_setting(tmp_path):
    with pytest.raises(InputError, match="VOICES_PERSONAS_FILE"):
        load_personas(tmp_path / "absent.toml")


def test_provider_tables_are_read_and_checked(tmp_path):
    from bot.personas import load_providers

    path = tmp_path / "p.toml"
    path.write_text(
        '[providers.lab]\nbase_url = "http://localhost:11434/v1/"\n'
        '[llama]\nprovider = "lab"\nmodel = "llama3.2"\ncompletion_price = "0.000002"\n'
    )
    (lab,) = load_providers(path).values()
    assert (lab.name, lab.base_url, lab.api_key) == ("lab", "http://localhost:11434/v1", None)
    assert load_personas(path)["llama"].provider == "lab"
    path.write_text('[providers.lab]\napi_key = "x"\n')
    with pytest.raises(InputError, match="provider 'lab' in .*: base_url: Field required"):
        load_providers(path)
    path.write_text('[providers.lab]\nbase_url = "http://me:hunter2@localhost:11434/v1"\n')
    with pytest.raises(InputError, match="base_url: holds a name or password before its host") as refused:
        load_providers(path)
    assert "hunter2" not in str(refused.value)  # the api_key field is where a secret goes
    path.write_text('[llama]\nprovider = "nowhere"\nmodel = "llama3.2"\n')
    with pytest.raises(InputError, match="names provider 'nowhere', which has no \\[providers.NAME\\] table"):
        load_personas(path)


def test_a_local_model_id_becomes_a_local_persona():
    persona = resolve_persona("local:default", {}, max_tokens=64)
    assert (persona.name, persona.model) == ("local-default", "local:default")
