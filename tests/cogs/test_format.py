"""Discord text limits: the splitter and the webhook name sanitiser."""

from __future__ import annotations

import re

import discord
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cogs._format import (
    MESSAGE_LIMIT,
    fence_open_after,
    fit_embed,
    sanitize_name,
    split_message,
    split_pieces,
)

words = st.sampled_from(
    ["word", "fire", "```", "```python", "~~~", "\n", "\n\n", ". ", "@everyone", "x" * 300, " ", "ü", "日本"]
)
texts = st.lists(words, max_size=800).map("".join)


@given(texts)
def test_no_chunk_is_over_the_limit_and_every_chunk_closes_its_fences(text):
    chunks = split_message(text)
    for chunk in chunks:
        assert len(chunk) <= MESSAGE_LIMIT
        assert fence_open_after(chunk, None) is None


@given(texts)
def test_the_pieces_join_back_into_the_text(text):
    assert "".join(split_pieces(text)) == text


@given(texts)
def test_chunks_are_the_pieces_plus_only_fence_lines(text):
    """What a chunk adds to its piece is a reopened fence at the start and a closing one at the end."""
    for chunk, piece in zip(split_message(text), split_pieces(text), strict=False):
        assert piece in chunk
        extra = chunk.replace(piece, "", 1)
        assert all(re.fullmatch(r"[`~]{3,}\S*", line) for line in extra.split("\n") if line)


def test_a_short_text_is_one_message():
    assert split_message("Hello.") == ["Hello."]
    assert split_message("") == []


def test_a_long_reply_is_cut_at_paragraphs():
    paragraph = ("A sentence about fire. " * 40).strip()
    text = "\n\n".join([paragraph] * 5)
    chunks = split_message(text)
    assert len(chunks) > 1
    assert all(c.rstrip().endswith(".") for c in chunks)


def test_a_code_block_across_a_cut_is_closed_and_reopened():
    code = "```python\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```\nDone."
    chunks = split_message(code)
    assert len(chunks) >= 2
    assert chunks[0].startswith("```python\n") and chunks[0].endswith("\n```")
    assert chunks[1].startswith("```python\n")
    assert chunks[-1].endswith("Done.")


@given(st.text(max_size=200))
def test_any_name_becomes_one_discord_accepts(name):
    clean = sanitize_name(name)
    assert 1 < len(clean) <= 80
    assert "discord" not in clean.lower() and "clyde" not in clean.lower()
    assert clean.lower() not in ("everyone", "here")
    assert clean.strip()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Claude", "Claude"),
        ("  Opus   4.6 ", "Opus 4.6"),
        ("Discord Bot", "Dis\u200acord Bot"),
        ("clyde", "cl\u200ayde"),
        ("X", "X\u17b5"),
        ("", "Voice"),
    ],
)
def test_names_read_the_same_after_sanitising(name, expected):
    assert sanitize_name(name) == expected


def test_an_embed_past_discords_limits_is_cut_with_an_ellipsis_and_fits_6000_in_all():
    """Four personas with long names made a title Discord refused, so there was no status message."""
    embed = discord.Embed(title=" ↔ ".join(["N" * 80] * 4), description="d" * 5000)
    for _ in range(8):
        embed.add_field(name="n" * 300, value="v" * 2000)
    embed.set_footer(text="Dialogue 1")
    fit_embed(embed)
    assert len(embed.title) == 256 and embed.title.endswith("…")
    assert len(embed.description) <= 4096 and all(len(f.name) <= 256 for f in embed.fields)
    assert all(len(f.value) <= 1024 and f.value.endswith("…") for f in embed.fields)
    assert len(embed) <= 6000 and embed.footer.text == "Dialogue 1"


def test_an_embed_within_the_limits_is_left_as_it_is():
    embed = discord.Embed(title="alice ↔ bob", description="Running.").add_field(name="Round", value="1/3")
    fit_embed(embed)
    assert (embed.title, embed.description, embed.fields[0].value) == ("alice ↔ bob", "Running.", "1/3")
