"""Shared fixtures: a loopback OpenRouter, a tmp-path store, a real provider, and recording fakes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from bot.catalogue import Catalogue
from bot.dialogue import DialogueRunner
from bot.events import Ended, Event
from bot.models import DialogueSpec, Limits, Persona
from bot.providers import Route, Router
from bot.providers.base import Provider
from bot.providers.openai_compat import OpenAICompatProvider
from bot.retry import RetryPolicy
from bot.store import Store
from bot.transport import make_client
from tests.fake_openrouter import FakeOpenRouter
from tests.postgres import PostgresServer, server_programs

# In CI the property tests and fuzzes run the same examples for the same commit, so whether a
# submission lands does not depend on luck; run anywhere else, they go on exploring new ones (that
# is how the CLI fuzz found `voices resume 99…9` overflowing SQLite).
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

API_KEY = "sk-or-v1-test-secret-0123456789"
OPUS = "anthropic/claude-opus-4.6"
GLM = "z-ai/glm-5"


class SteppingClock:
    """A clock that starts at a fixed moment and moves one second per reading."""

    def __init__(self, start: datetime = datetime(2026, 2, 13, 16, 40, tzinfo=UTC)):
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class RecordingSleep:
    """Stands in for asyncio.sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter() as fake:
        yield fake


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test marked `backends(...)` once on each database named, where it opens one."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker and {"store", "database"} & set(metafunc.fixturenames):
        metafunc.parametrize("backend", marker.args)


@pytest.fixture
def backend() -> str:
    """The database a test's store is on: SQLite unless the test is marked to run on more."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the tests' own, for the whole run."""
    programs = server_programs()
    if programs is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl); install postgresql-15 to run these")
    server = PostgresServer(programs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where a test's database is: a SQLite file's path, or a fresh database's PostgreSQL URL."""
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        return await server.database()
    return str(tmp_path / "voices.db")


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    async with Store.open(database) as opened:
        yield opened


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # The client the engine uses in production, so every provider test goes through it.
    async with make_client(httpx.Timeout(10.0)) as client:
        yield client


@pytest.fixture
def provider(http: httpx.AsyncClient, server: FakeOpenRouter) -> OpenAICompatProvider:
    return OpenAICompatProvider(http, server.base_url, API_KEY)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


def build_runner(
    store: Store,
    provider: Provider,
    clock: SteppingClock,
    sleep: RecordingSleep,
    max_budget: Decimal = Decimal("10"),
    retry: RetryPolicy | None = None,
) -> DialogueRunner:
    """Return the real engine over one provider and its catalogue, with a test's clock and sleep."""
    catalogue = Catalogue(provider, store, timedelta(hours=1), clock)
    return DialogueRunner(
        store,
        Router(Route(provider, catalogue)),
        clock,
        max_rounds=50,
        max_budget=max_budget,
        retry=retry or RetryPolicy(),
        sleep=sleep,
    )


@pytest.fixture
def make_runner(
    store: Store, sleep: RecordingSleep, clock: SteppingClock
) -> Callable[[Provider], DialogueRunner]:
    return lambda provider: build_runner(store, provider, clock, sleep)


@pytest.fixture
def runner(
    make_runner: Callable[[Provider], DialogueRunner], provider: OpenAICompatProvider
) -> DialogueRunner:
    return make_runner(provider)


def make_spec(
    *models: str,
    rounds: int = 2,
    budget: str = "1",
    opening: str = "Hello. What is on your mind?",
    max_tokens: int = 200,
    systems: tuple[str, ...] = (),
    **limits: object,
) -> DialogueSpec:
    """Return a spec with one ad-hoc persona per model (default: Opus and GLM)."""
    models = models or (OPUS, GLM)
    personas = tuple(
        Persona(
            name=f"P{i}" if len(set(models)) < len(models) else m.split("/")[1],
            model=m,
            system_prompt=systems[i] if i < len(systems) else f"You are speaker {i}.",
            max_tokens=max_tokens,
        )
        for i, m in enumerate(models)
    )
    return DialogueSpec(personas, opening, Limits(rounds, Decimal(budget), **limits))  # type: ignore[arg-type]


async def run_all(runner: DialogueRunner, dialogue_id: int, control: object = None) -> list[Event]:
    """Run a dialogue to its end and return every event."""
    events = [e async for e in runner.run(dialogue_id, control)]  # type: ignore[arg-type]
    assert isinstance(events[-1], Ended)
    return events
