"""Where the commands are synced: one development server at once with VOICES_DEV_GUILD_ID, else globally."""

from __future__ import annotations

import pytest

from cogs import create_bot
from tests.cogs.conftest import make_settings

DEV_GUILD = 1234567890123456789


@pytest.fixture
async def simcord_bot(tmp_path, server):
    bot = create_bot(make_settings(tmp_path, server, dev_guild_id=DEV_GUILD))
    yield bot
    await bot.close()


async def test_with_a_dev_guild_the_commands_go_to_that_server_only(simcord_env):
    syncs = [r for r in simcord_env.http_requests if r.method == "PUT" and r.path.endswith("/commands")]
    assert [r.path.split("/")[-2:] for r in syncs] == [[str(DEV_GUILD), "commands"]]
    guild = simcord_env.create_guild(id=DEV_GUILD)
    member = guild.add_member(simcord_env.create_user("alice"))
    assert "voices start" in member.available_commands(guild.create_text_channel("general"))
