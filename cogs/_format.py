"""Discord's text limits: splitting long replies, fitting embeds and making safe webhook names.
Pure functions."""

from __future__ import annotations

import re

import discord

MESSAGE_LIMIT = 2000
# https://discord.com/developers/docs/resources/message#embed-object-embed-limits
EMBED_TITLE, EMBED_DESCRIPTION, EMBED_FIELD_NAME, EMBED_FIELD_VALUE = 256, 4096, 256, 1024
EMBED_FOOTER, EMBED_TOTAL = 2048, 6000
ELLIPSIS = "…"
NAME_LIMIT = 80
# Room kept in each chunk for a code fence closed at its end and reopened at the next one's start.
FENCE_ROOM = 42
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BLOCKED_NAME_PARTS = re.compile(r"(?i)(dis)(cord)|(cl)(yde)")
HAIR_SPACE = "\u200a"
# An invisible character Discord accepts, to pad a one-character name to the two it requires.
PAD = "\u17b5"


def split_pieces(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Cut text into consecutive pieces that fit a message with room for fences; joined, they are the text.

    A cut falls at a paragraph break if one is near the end of the window, else after a sentence or a
    line, else at a space, and only as a last resort inside a word.
    """
    window = limit - FENCE_ROOM
    pieces: list[str] = []
    rest = text
    while len(rest) > window:
        cut = _cut_point(rest[:window])
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


def _cut_point(window: str) -> int:
    size = len(window)
    paragraph = window.rfind("\n\n")
    if paragraph > size // 2:
        return paragraph + 2
    sentence = max(window.rfind(mark) for mark in (". ", "! ", "? ", "\n"))
    if sentence > size // 3:
        return sentence + 1 if window[sentence] == "\n" else sentence + 2
    space = window.rfind(" ")
    if space > size // 3:
        return space + 1
    return size


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Return the text as messages of at most `limit` characters, each with its code fences balanced.

    A code block cut in two is closed at the end of one message and reopened (same fence and
    language) at the start of the next, so every message renders on its own.
    """
    return [message for _, message, _ in split_tail(text, None, limit)]


def split_tail(
    text: str, opener: str | None, limit: int = MESSAGE_LIMIT
) -> list[tuple[str, str, str | None]]:
    """Return (piece, message, fence open after it) for each message of `text`, which starts inside
    the code block `opener` opened (None: outside any).

    Pieces are cut from the front, so every piece but the last stays as it is however much text
    follows: a reply streamed into messages is split from its last message on, not from the start.
    """
    if opener is None and len(text) <= limit and fence_open_after(text, None) is None:
        return [(text, text, None)] if text else []
    parts = []
    for piece in split_pieces(text, limit):
        head = f"{opener}\n" if opener else ""
        after = fence_open_after(piece, opener)
        tail = f"\n{_fence_of(after)}" if after else ""
        parts.append((piece, f"{head}{piece}{tail}", after))
        opener = after
    return parts


def fence_open_after(text: str, opener: str | None) -> str | None:
    """Return the opening line of the code fence still open after `text` (None if all are closed)."""
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if not match:
            continue
        if opener is None:
            opener = line.strip()[:16]
        elif match.group(1)[0] == opener[0] and len(match.group(1)) >= len(_fence_of(opener)):
            opener = None
    return opener


def _fence_of(opener: str) -> str:
    return re.match(r"`+|~+", opener).group(0)  # type: ignore[union-attr]


def sanitize_name(name: str) -> str:
    """Return a webhook username Discord accepts: 1–80 characters, no "discord" or "clyde".

    Blocked words are broken with a hair space, the way PluralKit does, so the name still reads
    the same.
    """
    clean = " ".join(name.split()) or "Voice"
    clean = _BLOCKED_NAME_PARTS.sub(lambda m: HAIR_SPACE.join(g for g in m.groups() if g), clean)
    if clean.lower() in ("everyone", "here"):
        clean = f"{clean}{PAD}"
    clean = clean[:NAME_LIMIT]
    return clean if len(clean) > 1 else clean + PAD


def clip(text: str, limit: int) -> str:
    """Return text of at most `limit` characters, cut with an ellipsis where it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def fit_embed(embed: discord.Embed) -> discord.Embed:
    """Cut every part of the embed to Discord's limits, and the largest parts until all of it fits
    the 6,000 total: an embed over any limit is refused whole, buttons and all."""
    parts = [
        clip(embed.title or "", EMBED_TITLE),
        clip(embed.description or "", EMBED_DESCRIPTION),
        clip(embed.footer.text or "", EMBED_FOOTER),
    ]
    for f in embed.fields:
        parts += [clip(f.name or "", EMBED_FIELD_NAME), clip(f.value or "", EMBED_FIELD_VALUE)]
    while (excess := sum(map(len, parts)) - EMBED_TOTAL) > 0:
        largest = max(range(len(parts)), key=lambda i: len(parts[i]))
        parts[largest] = clip(parts[largest], max(1, len(parts[largest]) - excess))
    title, description, footer, *rest = parts
    embed.title, embed.description = title or None, description or None
    if footer:
        embed.set_footer(text=footer)
    inline = [f.inline for f in embed.fields]
    embed.clear_fields()
    for index, flag in enumerate(inline):
        embed.add_field(name=rest[2 * index] or ELLIPSIS, value=rest[2 * index + 1] or ELLIPSIS, inline=flag)
    return embed
