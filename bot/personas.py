"""The persona library: loading `personas.toml` and resolving a name or a bare model id to a Persona."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.errors import InputError
from bot.models import Persona

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


def load_personas(path: Path) -> dict[str, Persona]:
    """Read the persona library, keyed by its table names; a bad file is one clear InputError."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"persona file {path} not found; set VOICES_PERSONAS_FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"persona file {path} is not valid TOML: {exc}") from None
    personas = {}
    for key, table in data.items():
        try:
            entry = _PersonaEntry.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"persona '{key}' in {path}: {where}: {first['msg']}") from None
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
        if "/" not in ref:
            known = ", ".join(sorted(library)) or "none"
            raise InputError(f"'{ref}' is neither a persona ({known}) nor a model id like 'z-ai/glm-5'")
        persona = Persona(name=ref.rsplit("/", 1)[1].split(":")[0], model=ref)
    if persona.max_tokens is None:
        persona = replace(persona, max_tokens=max_tokens)
    return persona
