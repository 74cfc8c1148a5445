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


async def write_rows(store: Store, rows: int) -> None:
    """Write `rows` new rows of a page each, as an engine writes turns, then let the last
    checkpoint finish."""
    for n in range(rows):
        await store.set_state(f"key {n}", "x" * 3000)
        await asyncio.sleep(0)  # as an engine does between turns: a checkpoint may start
    for _ in range(200):
        await asyncio.sleep(0.005)


def pages_in_log(path: Path) -> int:
    """Return how many pages the write-ahead log holds now: since it last began again."""
    other = sqlite3.connect(path)
    try:
        _busy, pages, _copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(pages)
    finally:
        other.close()


async def test_the_write_ahead_log_is_checkpointed_and_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(bot.sqlite, "CHECKPOINT_EVERY", 10)
    path = tmp_path / "voices.db"
    async with Store.open(path) as store:
        await write_rows(store, 1000)
        # The log begins again at the first write that finds all of it copied back; one more
        # write, after the last checkpoint, is that write even where the checkpoints running
        # meanwhile never caught up with a burst of writes (once in a full run of the suite).
        await store.set_state("after the burst", "x")
        # Each 3,000-byte row needs a page of its own: unchecked, the log would hold 1,000 pages
        # or more (4,100 of them, 17 MB, measured). Fewer means it was copied back and begun
        # again. (Not the file's size: that is the log's high-water mark, which depends on how
        # many writes one checkpoint's flush to disk overlapped.)
        assert pages_in_log(path) < 1000
    log = path.with_name(path.name + "-wal")
    assert not log.exists() or log.stat().st_size == 0  # closing checkpointed the rest
    async with Store.open(path) as store:  # and everything written is there
        assert await store.get_state("key 999") == "x" * 3000
