"""The model catalogue: fetched once, cached in the database for its TTL, then fetched again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.catalogue import Catalogue
from bot.errors import UnknownModel
from tests.conftest import GLM

pytestmark = pytest.mark.backends("sqlite", "postgres")


def model_fetches(server) -> int:
    return sum(1 for r in server.requests if r.path == "/api/v1/models")


async def test_fetched_once_then_served_from_the_database_until_the_ttl(provider, store, server, clock):
    first = Catalogue(provider, store, timedelta(hours=1), clock)
    assert (await first.get(GLM)).context_length == 202752
    await first.get(GLM)
    assert model_fetches(server) == 1
    # A new process (a new Catalogue on the same database) within the TTL asks nobody.
    assert (await Catalogue(provider, store, timedelta(hours=1), clock).get(GLM)).id == GLM
    assert model_fetches(server) == 1
    clock.now += timedelta(hours=2)
    await Catalogue(provider, store, timedelta(hours=1), clock).get(GLM)
    assert model_fetches(server) == 2


async def test_search_matches_id_or_name(provider, store, clock):
    catalogue = Catalogue(provider, store, timedelta(hours=1), clock)
    assert [m.id for m in await catalogue.search("GLM")] == [GLM]
    assert len(await catalogue.search("")) == 3


async def test_unknown_model_suggests_a_search(provider, store, clock):
    catalogue = Catalogue(provider, store, timedelta(hours=1), clock)
    with pytest.raises(UnknownModel, match="`voices models gpt-9` lists the matches"):
        await catalogue.get("openai/gpt-9")
