"""Backups of a live database and checks of a file: a copy taken while a dialogue is being written
holds every turn committed before it began, whole, and opens as the database it was."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.backup import back_up, check
from bot.errors import InputError
from bot.models import Status
from bot.store import Store
from tests.conftest import make_spec
from tests.fake_openrouter import Reply


def committed_turns(path) -> list[tuple[int, str]]:
    """Read the turns another process would see committed now."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT seq, text FROM turns ORDER BY seq").fetchall()
    finally:
        conn.close()


async def test_a_backup_taken_while_a_dialogue_is_written_restores_every_committed_turn(
    runner, store, server, tmp_path
):
    server.enqueue(*[Reply(text=f"Turn {i} " + "word " * 30, chunk_delay=0.002) for i in range(24)])
    dialogue = await runner.create(make_spec(rounds=12, budget="5"))
    writing = asyncio.create_task(_drain(runner.run(dialogue.id)))
    backups = []
    while not writing.done():
        before = committed_turns(store.path)
        target = tmp_path / f"backup-{len(backups)}.db"
        health = await asyncio.to_thread(back_up, store.path, target)
        backups.append((before, target, health))
        await asyncio.sleep(0.05)
    await writing
    final = committed_turns(store.path)
    assert len(final) == 24
    taken_mid_dialogue = [b for b in backups if 0 < len(b[0]) < 24]
    assert len(taken_mid_dialogue) >= 3, "the dialogue ended before backups could catch it mid-way"
    for before, target, health in backups:
        assert health.ok and check(target).ok
        restored = committed_turns(target)
        # Every turn committed before the backup began is there, exactly as the live database has it,
        # and nothing that is not a committed turn of the live database.
        assert restored[: len(before)] == before
        assert restored == final[: len(restored)]
        assert not (tmp_path / f"{target.name}-wal").exists()  # one self-contained file
    # Restoring is pointing Voices at the copy: it opens, migrated, with the dialogue mid-way. (A
    # backup begun mid-way may end after the last turn: the copy is the one it made, not `before`.)
    before, target, _ = [b for b in taken_mid_dialogue if len(committed_turns(b[1])) < 24][-1]
    async with Store.open(target) as restored:
        copy = await restored.get_dialogue(dialogue.id)
        assert copy.status is Status.RUNNING
        assert [t.text for t in await restored.list_turns(dialogue.id)][: len(before)] == [
            t for _, t in before
        ]


async def _drain(events) -> None:
    async for _ in events:
        pass


async def test_check_finds_damage_and_names_it_in_one_line(store, tmp_path):
    await store.create_dialogue(make_spec(), datetime.now(UTC))
    target = tmp_path / "copy.db"
    back_up(store.path, target)
    assert check(target).ok
    # Damage a page in the middle of the copy: SQLite's integrity check sees it.
    data = bytearray(target.read_bytes())
    page = 4096
    for i in range(page * 2, page * 2 + 200):
        data[i] = 0xFF
    target.write_bytes(bytes(data))
    damaged = check(target)
    assert not damaged.ok
    assert "\n" not in damaged.describe()
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("hello")
    assert check(not_a_database).describe() == (
        f"{not_a_database}: not a readable SQLite database (file is not a database)"
    )


def test_backup_refusals_are_one_line(tmp_path):
    with pytest.raises(InputError, match=f"no database at {tmp_path}/absent.db; set VOICES_DATABASE"):
        back_up(tmp_path / "absent.db", tmp_path / "b.db")
    live = tmp_path / "live.db"
    sqlite3.connect(live).close()
    with pytest.raises(InputError, match="is the database itself"):
        back_up(live, live)
    with pytest.raises(InputError, match="is a folder"):
        back_up(live, tmp_path)


async def test_a_backup_replaces_the_last_one_but_never_a_database_in_use(store, tmp_path):
    """A nightly backup to one path replaces the night before's; a slip of the path onto another
    database that something has open would have replaced its data with this one's."""
    nightly = tmp_path / "nightly.db"
    assert back_up(store.path, nightly).ok and back_up(store.path, nightly).ok
    async with Store.open(tmp_path / "other.db") as other:
        kept = await other.create_dialogue(make_spec(opening="Kept."), datetime.now(UTC))
        with pytest.raises(
            InputError, match="other.db is a database in use \\(.*other.db-wal is beside it\\)"
        ):
            back_up(store.path, other.path)
        assert (await other.get_dialogue(kept.id)).opening == "Kept."


async def test_a_backup_through_a_link_keeps_the_link_and_a_pipe_is_refused(store, tmp_path):
    """The copy is renamed into place: onto a link it would replace the link, onto a pipe or a
    device (as root, /dev/null) it would put a file where that was."""
    live = store.path
    real, link = tmp_path / "backups" / "latest.db", tmp_path / "latest.db"
    real.parent.mkdir()
    link.symlink_to(real)
    health = back_up(live, link)
    assert health.ok and health.path == link
    assert link.is_symlink() and check(real).ok
    pipe = tmp_path / "pipe.db"
    os.mkfifo(pipe)
    with pytest.raises(InputError, match=f"{pipe} is not a file \\(a device or a pipe\\)"):
        back_up(live, pipe)
    assert stat.S_ISFIFO(pipe.stat().st_mode)


def test_a_backup_where_no_file_can_be_written_names_the_backup_not_the_database(tmp_path):
    """A slip of the path onto somewhere nothing can be written (here /proc, where even root cannot
    make a file) used to read as the live database failing to open."""
    live = tmp_path / "live.db"
    sqlite3.connect(live).close()
    with pytest.raises(InputError) as refused:
        back_up(live, Path("/proc/voices-backup.db"))
    assert str(refused.value).startswith("cannot write /proc/voices-backup.db: ")
    assert str(refused.value).endswith("; choose another path") and "live.db" not in str(refused.value)
