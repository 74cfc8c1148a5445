"""The Discord bridge's tables (rooms, server settings, votes, schedules) on both databases: what
the bot writes reads back the same, Discord's 64-bit ids whole, and the compare-and-set steps
that keep a vote closed once and a show's slot run once hold on each."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest

from bot.guilds import GuildPolicy, GuildStore
from bot.models import Status, StopReason
from bot.rooms import Room, RoomStore
from bot.schedules import Cadence, ScheduleStore
from bot.store import utc_now
from bot.votes import VoteStore
from tests.conftest import make_spec

pytestmark = pytest.mark.backends("sqlite", "postgres")

# Discord's ids pass 2**53 and come near 2**63: a 32-bit column, or a float, would spoil them.
GUILD, CHANNEL, THREAD, MEMBER = 1456074443980800003, 1456074443980800006, 1456074443980800011, 2**62 + 7
DEFAULTS = GuildPolicy(max_rounds=50, max_budget=Decimal("5"), daily_cap_guild=Decimal("5"),
                       daily_cap_member=Decimal("1"), max_concurrent=3)  # fmt: skip


async def test_a_room_reads_back_whole_and_counts_what_its_server_committed(store):
    rooms = RoomStore(store)
    dialogue = await store.create_dialogue(make_spec(budget="0.25"), utc_now())
    room = await rooms.create(Room(dialogue.id, GUILD, CHANNEL, THREAD, MEMBER))
    assert (room.guild_id, room.thread_id, room.starter_id) == (GUILD, THREAD, MEMBER)
    await rooms.set_live_messages(dialogue.id, (THREAD + 1, THREAD + 2))
    await rooms.set_status_message(dialogue.id, THREAD + 3)
    await rooms.set_asking_message(dialogue.id, None)
    await rooms.mark_posted(dialogue.id, 0, (THREAD + 1, THREAD + 2))
    again = await rooms.in_thread(THREAD)
    assert again is not None and again.posted_seq == 0 and again.live_message_ids == ()
    assert again.posted_message_ids == (THREAD + 1, THREAD + 2) and again.status_message_id == THREAD + 3
    assert [r.dialogue_id for r in await rooms.in_states(Status.PENDING, Status.RUNNING)] == [dialogue.id]
    midnight = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert await rooms.committed(GUILD, midnight) == Decimal("0.25")  # running: its whole budget
    assert await rooms.committed(GUILD, midnight, MEMBER) == Decimal("0.25")
    assert await rooms.active_count(GUILD) == 1
    await store.finish_dialogue(dialogue.id, StopReason.USER_STOP, None, utc_now())
    assert await rooms.committed(GUILD, midnight) == Decimal(0)  # ended: what it spent
    assert await rooms.active_count(GUILD) == 0


async def test_a_servers_settings_are_kept_over_the_defaults_and_reset_to_them(store):
    guilds = GuildStore(store, DEFAULTS)
    assert await guilds.policy(GUILD) == DEFAULTS
    changed = await guilds.update(
        GUILD, max_budget=Decimal("0.75"), allowed_models=frozenset({"z-ai/glm-5"}), polls=False,
        interject_role=MEMBER,
    )  # fmt: skip
    assert changed.max_budget == Decimal("0.75") and changed.allowed_models == {"z-ai/glm-5"}
    assert changed.polls is False and changed.interject_role == MEMBER
    assert (await guilds.update(GUILD, max_budget=None)).max_budget == DEFAULTS.max_budget
    assert (await GuildStore(store, DEFAULTS).policy(GUILD)).interject_role == MEMBER


async def test_a_vote_closes_once_whoever_gets_there_first(store):
    votes = VoteStore(store)
    dialogue = await store.create_dialogue(make_spec(), utc_now())
    opened = datetime(2026, 11, 27, 12, tzinfo=UTC)
    await votes.open(dialogue.id, "Who made the stronger case?", ["Ada", "Basil"], (THREAD, THREAD + 9),
                     opened, opened + timedelta(hours=1))  # fmt: skip
    assert await votes.earliest() == opened + timedelta(hours=1)
    assert await votes.due(opened) == []
    (due,) = await votes.due(opened + timedelta(hours=2))
    assert (due.dialogue_id, due.channel_id, due.message_id) == (dialogue.id, THREAD, THREAD + 9)
    assert await votes.close(dialogue.id, [3, 1], opened + timedelta(hours=2))
    assert not await votes.close(dialogue.id, [9, 9], opened + timedelta(hours=2))  # another process, later
    assert (await store.get_dialogue(dialogue.id)).vote.counts == (3, 1)  # type: ignore[union-attr]


async def test_a_shows_slot_is_claimed_once_and_the_show_reads_back_whole(store):
    shows = ScheduleStore(store)
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    show = await shows.add(GUILD, CHANNEL, MEMBER, ("claude", "glm"), "Fire or form?", 3, Decimal("0.30"),
                           Cadence.DAILY, time(18, 0), None, None, now)  # fmt: skip
    assert (show.guild_id, show.created_by, show.voices, show.budget_usd) == (
        GUILD, MEMBER, ("claude", "glm"), Decimal("0.30")
    )  # fmt: skip
    assert await shows.earliest() == show.next_run_at == datetime(2026, 11, 27, 18, tzinfo=UTC)
    (due,) = await shows.due(show.next_run_at)
    assert await shows.claim(due, show.next_run_at)
    assert not await shows.claim(due, show.next_run_at)  # the same slot, a second time: refused
    dialogue = await store.create_dialogue(make_spec(), utc_now())
    await shows.ran(show.id, dialogue.id, show.next_run_at)
    await shows.disable(show.id, "its channel is gone")
    kept = await shows.get(GUILD, show.id)
    assert kept.last_dialogue_id == dialogue.id and kept.disabled == "its channel is gone"
    assert await shows.due(show.next_run_at + timedelta(days=3)) == []  # disabled: never due
    await shows.remove(GUILD, show.id)
    assert await shows.of_guild(GUILD) == []
