"""The model catalogue: fetched from the provider once, cached in the store for a TTL, looked up by id."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from datetime import datetime, timedelta

from bot.errors import UnknownModel
from bot.models import ModelInfo, matching
from bot.providers.base import Provider
from bot.store import Store


class Catalogue:
    """Model ids, prices and limits of one provider."""

    def __init__(self, provider: Provider, store: Store, ttl: timedelta, clock: Callable[[], datetime]):
        self._provider = provider
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._models: dict[str, ModelInfo] | None = None

    async def models(self, refresh: bool = False) -> dict[str, ModelInfo]:
        """Return every model, from memory, then the store while fresh, then the provider."""
        if self._models is not None and not refresh:
            return self._models
        fetched_at, cached = await self._store.load_models(self._provider.source)
        if refresh or fetched_at is None or self._clock() - fetched_at > self._ttl:
            cached = await self._provider.list_models()
            await self._store.save_models(self._provider.source, cached, self._clock())
        self._models = {m.id: m for m in cached}
        return self._models

    async def get(self, model_id: str) -> ModelInfo:
        """Return the model, or raise UnknownModel naming the closest ids."""
        models = await self.models()
        if model_id in models:
            return models[model_id]
        close = difflib.get_close_matches(model_id, list(models), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        search = model_id.split("/")[-1][:12]
        raise UnknownModel(f"unknown model '{model_id}'; {hint}`voices models {search}` lists the matches")

    async def search(self, text: str = "") -> list[ModelInfo]:
        """Return the models whose id or name contains `text`, case-insensitive."""
        return matching(text, (await self.models()).values())

    async def search_stored(self, text: str = "") -> tuple[datetime | None, list[ModelInfo]]:
        """Return when the stored copy was fetched and its models that match, however old it is:
        what can still be shown when the provider cannot be reached."""
        fetched_at, cached = await self._store.load_models(self._provider.source)
        return fetched_at, matching(text, cached)
