"""The persona library: loading `personas.toml` and resolving a name or a bare model id to a Persona."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.errors import InputError
from bot.models import MAX_PRICE, Persona
from bot.providers.openai_compat import check_base_url, check_web_url

_Entry = TypeVar("_Entry", bound=BaseModel)
Effort = Literal["max", "xhigh", "high", "medium", "low", "minimal", "none"]


class _PersonaEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=80)
    model: str = Field(min_length=1)
    system_prompt: str = ""
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=16)
    reasoning_effort: Effort | None = None
    avatar_url: str | None = None
    provider: str | None = Field(default=None, min_length=1)
    prompt_price: Decimal | None = Field(default=None, ge=0, le=MAX_PRICE)
    completion_price: Decimal | None = Field(default=None, ge=0, le=MAX_PRICE)
    chat_format: str | None = Field(default=None, min_length=1)

    @field_validator("avatar_url")
    @classmethod
    def _check_avatar(cls, value: str | None) -> str | None:
        # Discord refuses every post whose avatar is not a web address it can fetch: checked here,
        # the persona's voice would otherwise never reach its thread.
        if value is not None:
            check_web_url(value)
        return value


class _ProviderEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    # An HTTP header carries the key: printable ASCII without spaces.
    api_key: str | None = Field(default=None, pattern=r"^[!-~]*$")

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_base_url(value)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """An OpenAI-compatible server named in the persona library (Ollama, LM Studio, vLLM, …)."""

    name: str
    base_url: str
    api_key: str | None = None


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"persona file {path} not found; set VOICES_PERSONAS_FILE") from None
    except IsADirectoryError:
        raise InputError(f"persona file {path} is a folder; set VOICES_PERSONAS_FILE to a file") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"persona file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise InputError(
            f"cannot read persona file {path}: {exc.strerror}; set VOICES_PERSONAS_FILE"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"persona file {path} is not valid TOML: {exc}; fix it") from None


def _validate(kind: type[_Entry], table: Any, what: str) -> _Entry:
    """Return the table as `kind`, or raise InputError naming its first problem in one line."""
    if not isinstance(table, dict):
        raise InputError(f"{what} must be a table of keys, not a single value")
    try:
        return kind.model_validate(table)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(f"{what}: {where}: {message}") from None


def load_providers(path: Path) -> dict[str, ProviderSpec]:
    """Read the `[providers.NAME]` tables of the persona library."""
    providers = {}
    tables = _read(path).get("providers", {})
    if not isinstance(tables, dict):
        raise InputError(f"persona file {path}: 'providers' must be a table of [providers.NAME] tables")
    for name, table in tables.items():
        entry = _validate(_ProviderEntry, table, f"provider '{name}' in {path}")
        providers[name] = ProviderSpec(name, entry.base_url, entry.api_key)
    return providers


def load_personas(path: Path) -> dict[str, Persona]:
    """Read the persona library, keyed by its table names; a bad file is one clear InputError."""
    data = _read(path)
    providers = set(data.pop("providers", {}))
    personas = {}
    for key, table in data.items():
        entry = _validate(_PersonaEntry, table, f"persona '{key}' in {path}")
        if entry.provider is not None and entry.provider not in providers:
            raise InputError(
                f"persona '{key}' in {path} names provider '{entry.provider}', "
                "which has no [providers.NAME] table there"
            )
        personas[key] = Persona(name=entry.name or key, **entry.model_dump(exclude={"name"}))
    return personas


def resolve_persona(ref: str, library: dict[str, Persona], max_tokens: int) -> Persona:
    """Return the library persona named `ref`, or an ad-hoc persona for a bare model id.

    An ad-hoc persona is named after the model (`z-ai/glm-5` speaks as `glm-5`). `max_tokens` fills
    in where the persona does not set its own.
    """
    ref = ref.strip()
    persona = library.get(ref)
    if persona is None:
        if ref.startswith("local:"):
            stem = Path(ref.removeprefix("local:")).stem or "model"
            persona = Persona(name=f"local-{stem}", model=ref)
        elif "/" in ref:
            persona = Persona(name=ref.rsplit("/", 1)[1].split(":")[0], model=ref)
        else:
            known = ", ".join(sorted(library)) or "none"
            raise InputError(f"'{ref}' is neither a persona ({known}) nor a model id like 'z-ai/glm-5'")
    if persona.max_tokens is None:
        persona = replace(persona, max_tokens=max_tokens)
    return persona


def resolve_participants(
    seats: Iterable[tuple[str, str | None]],
    library: dict[str, Persona],
    max_tokens: int,
    force_max_tokens: bool = False,
    person: Callable[[str], Persona | None] = lambda ref: None,
) -> list[Persona]:
    """Return one persona per (persona name or model id, system prompt or None), names made distinct.

    A given system prompt replaces the persona's; with `force_max_tokens`, `max_tokens` replaces
    every persona's own cap too. `person` seats a person for the references a front end gives
    them ('me', 'human'), checked before the library so no persona can take that name.
    """
    participants = []
    for ref, system in seats:
        seated = person(ref.strip())
        if seated is not None:
            participants.append(seated)
            continue
        persona = resolve_persona(ref, library, max_tokens)
        if system is not None:
            persona = replace(persona, system_prompt=system)
        if force_max_tokens:
            persona = replace(persona, max_tokens=max_tokens)
        participants.append(persona)
    return distinct_names(participants)


def distinct_names(participants: Sequence[Persona]) -> list[Persona]:
    """Return the participants with repeated names numbered (a model talking to itself: glm-5, glm-5 2)."""
    seen: dict[str, int] = {}
    named = []
    for persona in participants:
        seen[persona.name] = seen.get(persona.name, 0) + 1
        count = seen[persona.name]
        named.append(persona if count == 1 else replace(persona, name=f"{persona.name} {count}"))
    return named
