"""Forgetting a member, at the store: interjections from before author ids were recorded are found
by name, and only in the server asked about."""

from __future__ import annotations

import pytest

from bot.app import utc_now
from bot.privacy import MARKER, forget_member
from tests.conftest import make_spec

pytestmark = pytest.mark.backends("sqlite", "postgres")


async def test_an_old_interjection_without_an_author_id_is_found_by_name(store):
    """Interjections from before ids were recorded carry only the name shown at the time."""
    dialogue = await store.create_dialogue(make_spec(), utc_now())
    async with store.transaction() as conn:
        await conn.execute(
            "INSERT INTO rooms (dialogue_id, guild_id, channel_id, thread_id, starter_id) "
            "VALUES ($1, 7, 8, 9, 99)",
            (dialogue.id,),
        )
    await store.add_interjection(dialogue.id, "Zoe", "Zoe's old note", utc_now())
    await store.add_interjection(dialogue.id, "Max", "Max's note", utc_now(), author_id="55")
    done = await forget_member(store, 7, 42, ["Zoe", "zoe_the_user"])
    assert done.interjections == 1 and done.openings == 0
    texts = [n.text for n in await store.list_notes(dialogue.id)]
    assert texts == [MARKER, "Max's note"]
    # Another server's dialogues are not touched.
    assert (await forget_member(store, 8, 55)).interjections == 0
