"""The engine's HTTP transport (httpx over aiohttp): it keeps connections alive, and never reuses
one the server has closed."""

import asyncio

from bot.providers.openai_compat import OpenAICompatProvider
from tests.bot.providers.test_openai_compat import collect
from tests.fake_openrouter import FakeOpenRouter


async def test_one_connection_carries_turn_after_turn(provider: OpenAICompatProvider, server: FakeOpenRouter):
    for _ in range(3):
        await collect(provider)
    assert len(server.chat_requests) == 3
    assert server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    provider: OpenAICompatProvider, server: FakeOpenRouter
):
    await collect(provider)
    assert server.close_idle() == 1
    await asyncio.sleep(0.1)  # the close reaches the client, as it does long before a next turn
    text, _, completion = await collect(provider)
    assert text and completion.finish_reason == "stop"
    assert server.connections == 2
