"""The engine's resources, created in one place: store, HTTP client, provider, catalogue, runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from bot.catalogue import Catalogue
from bot.database import Address
from bot.dialogue import DialogueRunner
from bot.errors import InputError
from bot.personas import ProviderSpec
from bot.plan import Tuning
from bot.providers import Route, Router
from bot.providers.base import Provider
from bot.providers.local import INSTALL, LocalCatalogue, LocalModels, LocalProvider
from bot.providers.openai_compat import OpenAICompatProvider
from bot.providers.scripted import ScriptedProvider, free_models
from bot.retry import RetryPolicy
from bot.store import Store
from bot.transport import make_client


def utc_now() -> datetime:
    """Return the current time in UTC: the engine's one clock."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Plain values the engine needs, taken from the settings by the composition root."""

    #: The database: a SQLite file's path, or an address read from VOICES_DATABASE.
    database: Path | Address
    base_url: str
    api_key: str | None
    max_rounds: int
    max_budget: Decimal
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    catalogue_ttl: timedelta = timedelta(hours=24)
    #: With models listed here, nothing goes over the network: a scripted provider answers for free.
    dry_run_models: tuple[str, ...] = ()
    #: OpenAI-compatible servers named in the persona library.
    providers: tuple[ProviderSpec, ...] = ()
    #: Why the persona library's servers could not be read; said when a dialogue needs them.
    providers_error: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tuning: Tuning = field(default_factory=Tuning)
    #: How to install the local model, in words that fit where Voices runs (a checkout, an image).
    install_advice: str = INSTALL
    #: Seconds between reads of a streamed reply: what arrives meanwhile is read in one piece. The
    #: terminal prints every 50 ms and Discord edits once a second, so reading more often shows no
    #: one anything sooner, and a read per token costs about a fifth more CPU per token
    #: (docs/benchmarks.md §9). 0 reads each piece as it comes.
    read_pace: float = 0.05


def check_personas(config: EngineConfig) -> None:
    """Raise InputError if the persona library is broken: nothing can be seated from it."""
    if config.providers_error is not None:
        raise InputError(config.providers_error)


@dataclass(frozen=True, slots=True)
class App:
    """The engine's live resources."""

    store: Store
    provider: Provider
    catalogue: Catalogue
    runner: DialogueRunner


def _router(
    default: Route, config: EngineConfig, http: httpx.AsyncClient, store: Store, ttl: timedelta
) -> Router:
    """Return the router to OpenRouter, the personas file's named servers and local models."""
    named = {}
    for spec in config.providers:
        server = OpenAICompatProvider(
            http,
            spec.base_url,
            spec.api_key,
            generation_lookups=False,
            key_setting=f"the api_key of [providers.{spec.name}] in the personas file",
            read_pace=config.read_pace,
        )
        named[spec.name] = Route(server, Catalogue(server, store, ttl, utc_now))
    local = LocalModels(config.install_advice)
    return Router(default, named, Route(LocalProvider(local), LocalCatalogue(local)))


@asynccontextmanager
async def open_app(config: EngineConfig) -> AsyncIterator[App]:
    """Open the store and one shared HTTP client, wire the engine, and close both on exit."""
    timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
    # The transport's pool is unbounded: with a limit, a dialogue's next request would wait for
    # another's stream to end (bench/scale.py showed it at 100). Guild limits bound how many run.
    client = make_client(timeout)
    async with Store.open(config.database) as store, client as http:
        provider: Provider
        ttl = config.catalogue_ttl
        if config.dry_run_models:
            provider, ttl = ScriptedProvider(free_models(config.dry_run_models)), timedelta(0)
        else:
            provider = OpenAICompatProvider(http, config.base_url, config.api_key, read_pace=config.read_pace)
        catalogue = Catalogue(provider, store, ttl, utc_now)
        if config.dry_run_models:
            # A dry run calls nothing real: local models and named servers are scripted as well.
            scripted = Route(provider, catalogue)
            router = Router(scripted, {spec.name: scripted for spec in config.providers}, scripted)
        else:
            router = _router(Route(provider, catalogue), config, http, store, ttl)
        runner = DialogueRunner(
            store,
            router,
            utc_now,
            max_rounds=config.max_rounds,
            max_budget=config.max_budget,
            retry=config.retry,
            tuning=config.tuning,
        )
        yield App(store, provider, catalogue, runner)
