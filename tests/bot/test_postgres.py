"""PostgreSQL beside SQLite: the same schema, one-line errors that keep the password out, processes
that migrate and write one database at once, and `voices db copy` between the two kinds."""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from bot import transfer
from bot.database import address
from bot.errors import InputError, LeaseHeld, StoreError
from bot.migrations import SCHEMA_VERSION
from bot.models import Note, NoteKind, Usage
from bot.store import Store, utc_now
from bot.transcript import render_json, render_markdown
from bot.transfer import TABLES, copy_database
from tests.bot.test_store import a_turn
from tests.conftest import make_spec


def test_the_database_setting_reads_paths_sqlite_urls_and_postgresql_urls():
    assert address("data/v.db").path == Path("data/v.db")
    assert address("sqlite:///data/v.db").path == Path("data/v.db")
    assert address("sqlite:////srv/v.db").path == Path("/srv/v.db")
    pg = address("postgresql://voices:hunter2@db.example:5433/voices?sslmode=require")
    assert pg.kind == "postgresql" and pg.url is not None and "hunter2" in pg.url
    assert pg.name == "postgresql://voices@db.example:5433/voices"  # no password, no query
    with pytest.raises(InputError, match="does not know databases of kind 'mysql'.*postgresql://"):
        address("mysql://root@localhost/voices")
    with pytest.raises(InputError, match="port that is not a number"):
        address("postgresql://voices@db:port/voices")


async def test_a_server_that_does_not_answer_is_one_line_without_the_password(postgres):
    closed = postgres.url("voices", password="hunter2").replace(str(postgres.port), "1")
    with pytest.raises(StoreError) as refused:
        async with Store.open(closed):
            pass
    message = str(refused.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith("cannot open database postgresql://voices@127.0.0.1:1/voices (")
    assert message.endswith("check that the server runs, or set VOICES_DATABASE")


async def test_both_databases_hold_the_same_tables_and_columns(postgres, tmp_path):
    url = await postgres.database()
    async with Store.open(tmp_path / "v.db") as lite, Store.open(url) as pg:
        tables = [r[0] for r in await lite.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")]
        wanted = {
            t: {
                (c["name"], bool(c["notnull"]) or bool(c["pk"]))
                for c in await lite.fetchall(f"PRAGMA table_info({t})")
            }
            for t in tables
        }
        rows = await pg.fetchall(
            "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name != 'voices_schema'"
        )
    got: dict[str, set[tuple[str, bool]]] = {}
    for r in rows:
        got.setdefault(r["table_name"], set()).add((r["column_name"], r["is_nullable"] == "NO"))
    assert got == wanted
    # And `voices db copy` knows every one of them.
    assert {t for t, _ in TABLES} == set(wanted)


async def test_processes_starting_at_once_on_an_empty_database_migrate_it_once(postgres):
    url = await postgres.database()

    async def open_one() -> int:
        async with Store.open(url) as store:
            return len(await store.list_dialogues())

    assert await asyncio.gather(*(open_one() for _ in range(4))) == [0, 0, 0, 0]
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT version FROM voices_schema") == SCHEMA_VERSION
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused_untouched(postgres):
    url = await postgres.database()
    async with Store.open(url):
        pass
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE voices_schema SET version = $1", SCHEMA_VERSION + 1)
        with pytest.raises(StoreError, match="newer than this Voices knows"):
            async with Store.open(url):
                pass
        assert await conn.fetchval("SELECT version FROM voices_schema") == SCHEMA_VERSION + 1
    finally:
        await conn.close()


async def test_two_processes_charging_one_dialogue_at_once_lose_no_cent(postgres):
    """Each charge reads the dialogue's total and writes it back: without the lock on the dialogue,
    two processes at once would each write their own sum, and one charge would vanish."""
    url = await postgres.database()
    async with Store.open(url) as here, Store.open(url) as there:
        dialogue = await here.create_dialogue(make_spec(), utc_now())

        async def charge(store: Store, n: int) -> None:
            note = Note(dialogue.id, 0, NoteKind.COMPACTED, f"summary {n}", utc_now(),
                        model="m", usage=Usage(10, 5), cost_usd=Decimal("0.0001"))  # fmt: skip
            await store.add_note(note)

        await asyncio.gather(*(charge(here if n % 2 else there, n) for n in range(40)))
        stored = await there.get_dialogue(dialogue.id)
    assert stored.totals.spent_usd == Decimal("0.0040")
    assert stored.totals.prompt_tokens == 400


async def test_two_processes_taking_one_lease_at_once_give_it_to_one(postgres):
    url = await postgres.database()
    async with Store.open(url) as here, Store.open(url) as there:
        dialogue = await here.create_dialogue(make_spec(), utc_now())
        results = await asyncio.gather(
            *(s.take_lease(dialogue.id, 30) for s in (here, there) * 3), return_exceptions=True
        )
    winners = {i % 2 for i, r in enumerate(results) if r is None}
    assert len(winners) == 1  # one process holds it, however often each asked
    assert all(isinstance(r, LeaseHeld) for i, r in enumerate(results) if i % 2 not in winners)


async def test_db_copy_moves_every_dialogue_to_postgresql_and_back_unchanged(postgres, tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "BATCH", 2)  # every table in several batches, as a big one is
    lite = tmp_path / "v.db"
    async with Store.open(lite) as store:
        first = await store.create_dialogue(make_spec(budget="0.5"), utc_now())
        await store.add_turn(a_turn(first.id, 0))
        await store.add_turn(a_turn(first.id, 1, "0.0045"))
        await store.add_interjection(first.id, "Zoe", "louder", utc_now())
        second = await store.create_dialogue(make_spec(), utc_now())
        before = [await store.history(d) for d in (first.id, second.id)]
    url = await postgres.database()
    copied = await copy_database(f"sqlite:///{lite}", url)
    assert (
        copied.rows["dialogues"] == 2 and copied.rows["turns"] == 2 and copied.spent_usd == Decimal("0.0081")
    )
    assert copied.describe().startswith("copied 2 dialogues (2 turns, 1 note, 0 rooms; spent $0.0081) from ")
    back = tmp_path / "back.db"
    await copy_database(url, back)
    for where in (url, back):
        async with Store.open(where) as store:
            after = [await store.history(d) for d in (first.id, second.id)]
            # Ids go on from the copied ones: the next dialogue is a new one, not a clash.
            third = await store.create_dialogue(make_spec(), utc_now())
        assert [render_markdown(*h) for h in after] == [render_markdown(*h) for h in before]
        assert [render_json(*h) for h in after] == [render_json(*h) for h in before]
        assert third.id == second.id + 1


async def test_db_copy_refuses_a_target_that_holds_data_and_leaves_it_as_it_was(postgres, tmp_path):
    lite = tmp_path / "v.db"
    async with Store.open(lite) as store:
        await store.create_dialogue(make_spec(), utc_now())
    url = await postgres.database()
    async with Store.open(url) as store:
        mine = await store.create_dialogue(make_spec(opening="mine"), utc_now())
    with pytest.raises(
        InputError, match=r"already holds 1 dialogue and 2 other rows; copy into an empty database"
    ):
        await copy_database(lite, url)
    async with Store.open(url) as store:
        assert [d.opening for d in await store.list_dialogues()] == [mine.opening]
    with pytest.raises(InputError, match="no database at .*missing.db"):
        await copy_database(tmp_path / "missing.db", url)
    with pytest.raises(InputError, match="both the source and the target"):
        await copy_database(lite, f"sqlite:///{lite}")
    async with Store.open(lite) as store:  # a process runs one of its dialogues right now
        await store.take_lease(1, 30)
        with pytest.raises(
            InputError, match=r"has 1 dialogue running \(a live lease\); stop Voices there first"
        ):
            await copy_database(lite, tmp_path / "copy.db")


async def test_a_lost_connection_is_one_line_and_the_next_step_connects_afresh(postgres):
    url = await postgres.database()
    async with Store.open(url) as store:
        dialogue = await store.create_dialogue(make_spec(), utc_now())
        admin = await asyncpg.connect(postgres.url("postgres"))
        try:  # the server drops every connection to the database, as a restart or a failover would
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                url.rsplit("/", 1)[1],
            )
        finally:
            await admin.close()
        try:  # the pool may notice first and connect afresh; else this step fails, in one line
            await store.get_dialogue(dialogue.id)
        except StoreError as lost:
            assert str(lost).startswith(f"lost the connection to database {address(url)} (")
            assert "\n" not in str(lost)
        assert (await store.get_dialogue(dialogue.id)).id == dialogue.id  # and the next step works


async def test_without_the_postgres_extra_a_postgresql_url_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if `pip install voices` left it out
    monkeypatch.delitem(sys.modules, "bot.postgres", raising=False)
    with pytest.raises(StoreError) as missing:
        async with Store.open("postgresql://voices@db.example/voices"):
            pass
    assert str(missing.value) == (
        "postgresql://voices@db.example/voices is PostgreSQL, and its driver is not installed; "
        "pip install -e '.[postgres]'"
    )
