"""The store on SQLite and PostgreSQL: migrations from blank, round trips, atomic turns, two
processes on one database, and refusing unusable databases in one line."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import aiosqlite
import pytest

from bot.errors import DialogueNotFound, StateError, StoreError
from bot.migrations import MIGRATIONS, SCHEMA_VERSION
from bot.models import ModelInfo, Pricing, Status, StopReason, Tally, Turn, TurnStatus, Usage
from bot.rooms import Room, RoomStore
from bot.sqlite import migrate, schema_version
from bot.store import Store, utc_now
from tests.conftest import make_spec

NOW = datetime(2026, 2, 13, 16, 40, tzinfo=UTC)

pytestmark = pytest.mark.backends("sqlite", "postgres")


def a_turn(dialogue_id: int, seq: int, cost: str = "0.0036") -> Turn:
    return Turn(
        dialogue_id,
        seq,
        seq // 2 + 1,
        seq % 2,
        "ignored",
        TurnStatus.OK,
        f"text {seq}",
        "why",
        Usage(258, 1053, 800, Decimal(cost)),
        Decimal(cost),
        "reported",
        "z-ai/glm-5",
        "stop",
        1234,
        1,
        NOW,
        NOW,
        "gen-1",
        "FakeProvider",
    )


async def test_migrating_a_blank_database_reaches_the_latest_version_and_rerunning_is_a_no_op(
    tmp_path,
):
    async with aiosqlite.connect(tmp_path / "blank.db") as conn:
        assert await schema_version(conn) == 0
        assert await migrate(conn) == SCHEMA_VERSION == len(MIGRATIONS)
        assert await migrate(conn) == SCHEMA_VERSION
        async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
            tables = {row[0] for row in await cur.fetchall()}
    assert {"dialogues", "participants", "turns", "calls_in_flight", "models"} <= tables


def test_every_migration_says_why():
    assert all(reason.strip() for reason, _ in MIGRATIONS)


@pytest.mark.backends("sqlite")
async def test_store_runs_in_wal_mode_with_foreign_keys(store):
    rows = await store.fetchall("PRAGMA journal_mode")
    assert rows[0][0] == "wal"
    assert (await store.fetchall("PRAGMA foreign_keys"))[0][0] == 1


async def test_a_dialogue_and_its_turns_round_trip(store):
    dialogue = await store.create_dialogue(make_spec(budget="0.5", max_seconds=60.0), NOW)
    assert dialogue.status is Status.PENDING and dialogue.limits.budget_usd == Decimal("0.5")
    await store.add_turn(a_turn(dialogue.id, 0))
    await store.add_turn(a_turn(dialogue.id, 1, "0.0045"))
    await store.finish_dialogue(dialogue.id, StopReason.BUDGET, "detail", NOW)
    again = await store.get_dialogue(dialogue.id)
    assert again.status is Status.FINISHED and again.stop_reason is StopReason.BUDGET
    assert again.totals.spent_usd == Decimal("0.0081")
    assert again.totals.prompt_tokens == 516 and again.totals.reasoning_tokens == 1600
    turns = await store.list_turns(dialogue.id)
    assert turns[0] == replace(a_turn(dialogue.id, 0), speaker=dialogue.participants[0].name)
    assert turns[1].speaker == dialogue.participants[1].name


async def test_the_tally_a_status_shows_adds_up_each_seats_own_turns(store):
    """The thread's status is drawn from sums the database makes, not from every turn read whole:
    they must be the same figures, carried-over turns counted as turns but not as this dialogue's
    tokens or cache saving, and the saving exact to the billionth."""
    earlier = [replace(a_turn(0, seq), cache_saving_usd=Decimal("0.5")) for seq in range(3)]
    spec = replace(make_spec(rounds=4), inherited=tuple(earlier))
    dialogue = await store.create_dialogue(spec, NOW)
    assert (await store.tally(dialogue.id)).seats == {}
    savings = ("0.000000001", "-0.000000003", "0", "0.1")
    for seq, saving in zip(range(3, 7), savings, strict=True):
        usage = Usage(100 + seq, 10 * seq, seq, Decimal("0.01"), cached_tokens=seq, cache_write_tokens=1)
        await store.add_turn(replace(a_turn(dialogue.id, seq), usage=usage, cache_saving_usd=Decimal(saving)))
    tally = await store.tally(dialogue.id)
    assert tally == Tally.of(await store.list_turns(dialogue.id))  # what the transcripts add up
    assert tally.turns == 7 and tally.seats[0].prompt_tokens == 104 + 106
    assert (tally.cached, tally.written) == (3 + 4 + 5 + 6, 4)
    assert tally.saved == Decimal("0.099999998")


async def test_a_turn_that_cannot_be_written_leaves_the_totals_untouched(store):
    dialogue = await store.create_dialogue(make_spec(), NOW)
    await store.add_turn(a_turn(dialogue.id, 0))
    with pytest.raises(StateError, match="another process is running this dialogue"):
        await store.add_turn(a_turn(dialogue.id, 0))  # the same seq twice: another process raced us
    again = await store.get_dialogue(dialogue.id)
    assert again.totals.spent_usd == Decimal("0.0036")
    assert len(await store.list_turns(dialogue.id)) == 1


async def test_unknown_dialogue_says_how_to_find_ids(store):
    with pytest.raises(DialogueNotFound, match="voices list"):
        await store.get_dialogue(99)


async def test_catalogue_round_trips_with_exact_prices(store):
    model = ModelInfo(
        "z-ai/glm-5",
        "GLM",
        202752,
        131072,
        Pricing(Decimal("0.0000008"), Decimal("0.00000256"), Decimal(0), Decimal(0)),
    )
    await store.save_models("src", [model], NOW)
    assert await store.load_models("src") == (NOW, [model])
    assert await store.load_models("other") == (None, [])


async def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path):
    path = tmp_path / "voices.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="unreadable.*move it aside"):
        async with Store.open(path):
            pass
    assert path.read_bytes().startswith(b"this is not sqlite")


async def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "voices.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this Voices knows"):
        async with Store.open(path):
            pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


async def test_a_database_from_the_previous_release_keeps_its_dialogues_after_the_upgrade(tmp_path):
    """Schema 3 (before caching, notes, people and lineage): a finished dialogue reads back whole."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for _reason, sql in MIGRATIONS[:3]:
            conn.executescript(sql)
        conn.execute("PRAGMA user_version = 3")
        conn.execute(
            "INSERT INTO dialogues (id, origin, status, opening, max_rounds, budget_usd, created_at, "
            "stop_reason, spent_usd, prompt_tokens, completion_tokens) VALUES "
            "(1, 'cli', 'finished', 'Hello.', 1, '0.5', ?, 'max_rounds', '0.0036', 258, 1053)",
            (NOW.isoformat(),),
        )
        for seat, model in enumerate(("anthropic/claude-opus-4.6", "z-ai/glm-5")):
            conn.execute(
                "INSERT INTO participants (dialogue_id, seat, name, model, system_prompt) "
                "VALUES (1, ?, ?, ?, '')",
                (seat, f"p{seat}", model),
            )
        conn.execute(
            "INSERT INTO turns VALUES (1, 0, 1, 0, 'ok', 'An old reply.', '', 258, 1053, 0, '0.0036', "
            "'reported', 'anthropic/claude-opus-4.6', NULL, NULL, 'stop', 900, 1, ?, ?)",
            (NOW.isoformat(), NOW.isoformat()),
        )
    async with Store.open(path) as store:
        dialogue, turns, notes = await store.history(1)
    assert dialogue.stop_reason is StopReason.MAX_ROUNDS and dialogue.totals.spent_usd == Decimal("0.0036")
    assert (dialogue.context_policy, dialogue.loop_action, dialogue.parent) == ("stop", "notify", None)
    (turn,) = turns
    assert (turn.text, turn.usage.cached_tokens, turn.cache_saving_usd, turn.inherited) == (
        "An old reply.",
        0,
        Decimal(0),
        False,
    )
    assert notes == []


@pytest.mark.parametrize("steps", range(8))
async def test_a_write_cancelled_at_any_point_leaves_no_transaction_open(store, steps):
    # A lease keeper is cancelled when its dialogue ends, maybe mid-renewal: whatever point the
    # cancellation reaches, the next write must still begin (and the cancelled one never half-land).
    dialogue = await store.create_dialogue(make_spec(), utc_now())

    async def rename() -> None:
        async with store.transaction() as conn:
            await conn.execute("UPDATE dialogues SET opening = 'changed' WHERE id = $1", (dialogue.id,))
            await conn.execute("UPDATE dialogues SET origin = 'changed' WHERE id = $1", (dialogue.id,))

    task = asyncio.create_task(rename())
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.set_state("after", "written")  # a write of its own: refused if one were left open
    assert await store.get_state("after") == "written"
    stored = await store.get_dialogue(dialogue.id)
    assert (stored.opening == "changed") == (stored.origin == "changed")  # all of it, or none


async def test_a_worker_finds_only_dialogues_left_for_it_or_by_a_process_that_stopped(store):
    ids = [(await store.create_dialogue(make_spec(), utc_now())).id for _ in range(5)]
    never, left, held, stopped, ended = ids
    assert await store.hand_over(left)
    await store.take_lease(held, 30)
    assert not await store.hand_over(held)  # a live process runs it: nothing changes
    await store.take_lease(stopped, 30)
    await store.release_lease(stopped)
    assert await store.hand_over(ended)
    await store.finish_dialogue(ended, StopReason.USER_STOP, None, utc_now())
    assert await store.unclaimed(utc_now(), 10) == [left, stopped]
    assert await store.unclaimed(utc_now(), 1) == [left]
    assert never not in await store.unclaimed(utc_now(), 10)  # its starter is about to run it
    # A dialogue shown in a chat is a Discord worker's to run (RoomStore.unclaimed), not another's.
    rooms = RoomStore(store)
    await rooms.create(Room(left, 1, 2, 3, 4))
    assert await store.unclaimed(utc_now(), 10) == [stopped]
    assert [r.dialogue_id for r in await rooms.unclaimed(utc_now(), 10)] == [left]
