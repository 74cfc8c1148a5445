"""Which provider and catalogue serve a persona.

`local:` models run in this process; a persona may name one of the OpenAI-compatible servers of the
persona library; every other persona goes to the default provider (OpenRouter). Never guessed from
a model's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from bot.errors import InputError, VoicesError
from bot.models import ModelInfo, Persona, Pricing
from bot.providers.base import Provider
from bot.providers.local import is_local

LOCAL = "local"

log = logging.getLogger(__name__)


class ModelLookup(Protocol):
    """What the engine needs of a catalogue."""

    async def get(self, model_id: str) -> ModelInfo: ...


@runtime_checkable
class Refreshable(Protocol):
    """A catalogue that can be fetched again, when a bill says its prices are out of date."""

    async def models(self, refresh: bool = False) -> dict[str, ModelInfo]: ...


@dataclass(frozen=True, slots=True)
class Route:
    """A provider with the catalogue its model ids belong to."""

    provider: Provider
    catalogue: ModelLookup


class Router:
    """Pick the route of each persona: local, a named server, or the default."""

    def __init__(self, default: Route, named: dict[str, Route] | None = None, local: Route | None = None):
        self.default = default
        self._named = dict(named or {})
        self._local = local

    @property
    def named(self) -> dict[str, Route]:
        """Return the OpenAI-compatible servers of the persona library, by name."""
        return dict(self._named)

    def route(self, persona: Persona) -> Route:
        """Return the route that serves this persona, or raise InputError naming what is missing."""
        if is_local(persona.model):
            if self._local is None:
                raise InputError(f"{persona.model} is a local model, and local models are off here")
            return self._local
        if persona.provider is None:
            return self.default
        if persona.provider not in self._named:
            raise InputError(f"{persona.name} names provider '{persona.provider}', which is not configured")
        return self._named[persona.provider]

    async def refresh(self, persona: Persona) -> None:
        """Fetch the persona's catalogue again; a failure leaves the prices as they were."""
        catalogue = self.route(persona).catalogue
        if isinstance(catalogue, Refreshable):
            try:
                await catalogue.models(refresh=True)
            except VoicesError as exc:
                log.warning("could not refresh the prices of %s: %s", persona.model, exc)

    async def model(self, persona: Persona) -> ModelInfo:
        """Return the persona's model from its catalogue, with the persona's own prices if it sets any.

        A person's seat has a "model" too: free, with no context limit, and never called.
        """
        if persona.is_human:
            return ModelInfo(persona.model, persona.name, None, None, Pricing())
        info = await self.route(persona).catalogue.get(persona.model)
        if persona.prompt_price is None and persona.completion_price is None:
            return info
        pricing = Pricing(
            prompt=persona.prompt_price or info.pricing.prompt,
            completion=persona.completion_price or info.pricing.completion,
        )
        return replace(info, pricing=pricing)
