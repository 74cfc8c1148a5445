"""Retention (VOICES_RETAIN_DAYS): dialogues that ended before the cut-off go, with everything that
hangs off them, and the log says which; running and recent ones stay."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from bot.app import utc_now
from bot.models import StopReason
from bot.store import Store
from tests.conftest import make_spec


async def finished(store: Store, days_ago: float) -> int:
    dialogue = await store.create_dialogue(make_spec(), utc_now() - timedelta(days=days_ago + 1))
    await store.finish_dialogue(
        dialogue.id, StopReason.MAX_ROUNDS, None, utc_now() - timedelta(days=days_ago)
    )
    return dialogue.id


@pytest.mark.settings(retain_days=30)
async def test_dialogues_past_the_retention_time_are_deleted_and_logged(world, caplog):
    store = world.bot.services.store
    old, recent = await finished(store, 40), await finished(store, 2)
    running = await store.create_dialogue(make_spec(), utc_now() - timedelta(days=90))
    with caplog.at_level(logging.WARNING, logger="cogs.client"):
        assert await world.bot.retain(30) == [old]
    (line,) = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
    assert line.startswith("retention (VOICES_RETAIN_DAYS=30): deleted 1 dialogue that ended before ")
    assert line.endswith(f": {old}")
    ids = {d.id for d in await store.list_dialogues(100)}
    assert ids == {recent, running.id}
    assert await store.fetchall("SELECT * FROM turns WHERE dialogue_id = $1", (old,)) == []
    assert await world.bot.retain(30) == []  # nothing more to do, nothing logged
