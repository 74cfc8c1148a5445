"""The files a dialogue's thread is given: its transcripts, and the picture of it."""

from __future__ import annotations

import asyncio
import gzip
import io

import discord

from bot.chart import render_png
from bot.store import Store
from bot.transcript import render_json, render_markdown


async def transcript_files(store: Store, dialogue_id: int, size_limit: int) -> list[discord.File]:
    """Return `transcript-<id>.md` and `.json` (each gzip-compressed if it would pass the upload limit)
    and `dialogue-<id>.png`, the picture of the dialogue."""
    history = await store.history(dialogue_id)
    files = []
    for extension, text in (("md", render_markdown(*history)), ("json", render_json(*history))):
        data, name = text.encode(), f"transcript-{dialogue_id}.{extension}"
        if len(data) > size_limit:
            data, name = gzip.compress(data), f"{name}.gz"
        files.append(discord.File(io.BytesIO(data), filename=name))
    # The picture beside them: drawing it takes a few tens of milliseconds, off the event loop.
    picture = await asyncio.to_thread(render_png, *history)
    if len(picture) <= size_limit:  # a picture does not compress: past the limit it is left out
        files.append(discord.File(io.BytesIO(picture), filename=f"dialogue-{dialogue_id}.png"))
    return files
