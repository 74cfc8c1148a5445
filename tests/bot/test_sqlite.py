"""The SQLite backend runs its statements on the event loop's own connection: another process's
write lock never stalls the loop, a lock held too long is one line, and the write-ahead log is
checkpointed off the loop so it stays bounded."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import bot.sqlite
from bot.errors import StoreError
from bot.store import Store, utc_now
from tests.conftest import make_spec


async def ticks_while(task: asyncio.Task[object], seconds: float) -> int:
    """Count how often the loop ran a 10 ms timer while `task` was pending."""
    ticks = 0
    for _ in range(round(seconds / 0.01)):
        await asyncio.sleep(0.01)
        ticks += not task.done()
    return ticks


def lock_from_another_process(path: Path) -> sqlite3.Connection:
    """Hold the database's write lock as another process would (its own connection, BEGIN IMMEDIATE)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO bot_state (key, value) VALUES ('other', 'process')")
    return other


async def test_a_write_waits_out_another_process_without_stalling_the_loop(tmp_path):
    async with Store.open(tmp_path / "voices.db") as store:
        other = lock_from_another_process(tmp_path / "voices.db")
        write = asyncio.create_task(store.create_dialogue(make_spec(), utc_now()))
        assert await ticks_while(write, 0.3) >= 20  # the loop ran on: ~30 ticks of 10 ms
        assert not write.done()
        assert await store.get_state("other") is None  # reads go on, and see only what is committed
        other.commit()
        dialogue = await asyncio.wait_for(write, 5)
        assert (await store.get_dialogue(dialogue.id)).opening == make_spec().opening
        assert await store.get_state("other") == "process"
        other.close()


async def test_a_lock_held_too_long_is_one_line_and_the_write_lands_nowhere(tmp_path, monkeypatch):
    monkeypatch.setattr(bot.sqlite, "BUSY_SECONDS", 0.2)
    async with Store.open(tmp_path / "voices.db") as store:
        other = lock_from_another_process(tmp_path / "voices.db")
        with pytest.raises(StoreError) as refused:
            await store.set_state("mine", "lost")
        with pytest.raises(StoreError):
            await store.create_dialogue(make_spec(), utc_now())
        other.rollback()
        other.close()
        assert (
            str(refused.value)
            == f"database {tmp_path / 'voices.db'} stayed locked by another process; try again"
        )
        assert await store.get_state("mine") is None
        assert await store.list_dialogues() == []
        await store.set_state("mine", "kept")  # nothing was left open: the next write goes through
        assert await store.get_state("mine") == "kept"


async def wal_after(store: Store, path: Path, first: int, writes: int) -> int:
    """Write `writes` new rows (each a page of the log) and return the log's size."""
    for n in range(first, first + writes):
        await store.set_state(f"key {n}", "x" * 3000)
        await asyncio.sleep(0)  # as an engine does between turns: a checkpoint may start
    for _ in range(200):  # let the last one finish
        await asyncio.sleep(0.005)
    return path.with_name(path.name + "-wal").stat().st_size


async def test_the_write_ahead_log_is_checkpointed_and_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(bot.sqlite, "CHECKPOINT_EVERY", 10)
    path = tmp_path / "voices.db"
    async with Store.open(path) as store:
        size = await wal_after(store, path, 0, 1000)
        # Each 3,000-byte row needs a page of its own: unchecked, the log would hold 1,000 pages
        # or more (17 MB, measured). Less than that means it was copied back and begun again.
        assert size < 1000 * 4096
    log = path.with_name(path.name + "-wal")
    assert not log.exists() or log.stat().st_size == 0  # closing checkpointed the rest
    async with Store.open(path) as store:  # and everything written is there
        assert await store.get_state("key 999") == "x" * 3000
