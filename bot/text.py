"""Text from outside (models, members, files), made safe where it crosses a boundary: lone surrogates
repaired to U+FFFD where it comes in, control characters and escape sequences removed where it goes
out to a terminal, and secrets masked wherever text is logged or shown; and counts put in words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A lone surrogate (a JSON "\ud800", or a byte that was not UTF-8 smuggled in by surrogateescape)
# cannot be encoded: SQLite, files and Discord would all refuse the text that holds it.
_SURROGATE = re.compile("[\ud800-\udfff]")

# Whole escape sequences first (CSI, OSC with its BEL or ST end, DCS/PM/APC strings, two-character
# ESC forms), so that what remains of them is not shown either; then every other control character
# but tab and newline. An OSC 52 writes the clipboard and CSI 2J clears the screen.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x9d[^\x07\x9c]*(?:\x07|\x9c)?"
    r"|\x1b[ -~]?"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def repair(text: str) -> str:
    """Return text that encodes as UTF-8: each lone surrogate becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def printable(text: str) -> str:
    """Return text a terminal shows as text: no escape sequences, no control characters but tab and
    newline (a carriage return could overwrite what was shown before it)."""
    if text.isprintable():
        return text
    return _CONTROL.sub("", _SEQUENCE.sub("", repair(text)))


# A webhook's URL carries its token: whoever holds it can post to the channel, mentions and all.
# discord.py names such URLs in its debug logs (interaction follow-ups are webhooks too).
_WEBHOOK_TOKEN = re.compile(r"(/webhooks/\d+/)[A-Za-z0-9_.\-]+")
# A run of this many characters of a secret is masked wherever it appears: a server error that
# echoes part of a key ("sk-or-v1-3f9…") gives that part away.
PARTIAL = 8
MASK = "***"


class Masker:
    """Mask secrets in text: each whole, any run of PARTIAL or more of their characters, and every
    webhook token."""

    def __init__(self, secrets: Iterable[str]):
        self._short = [s for s in secrets if s and len(s) < PARTIAL]
        self._grams = {
            s[i : i + PARTIAL] for s in secrets if len(s) >= PARTIAL for i in range(len(s) - PARTIAL + 1)
        }

    def __call__(self, text: str) -> str:
        text = _WEBHOOK_TOKEN.sub(rf"\1{MASK}", text)
        for secret in self._short:
            text = text.replace(secret, MASK)
        if not self._grams or len(text) < PARTIAL:
            return text
        hidden = bytearray(len(text))
        for start in range(len(text) - PARTIAL + 1):
            if text[start : start + PARTIAL] in self._grams:
                hidden[start : start + PARTIAL] = b"\x01" * PARTIAL
        if not any(hidden):
            return text
        out: list[str] = []
        for index, char in enumerate(text):
            if not hidden[index]:
                out.append(char)
            elif index == 0 or not hidden[index - 1]:
                out.append(MASK)
        return "".join(out)


def counted(number: int, noun: str) -> str:
    """Return "1 round", "3 rounds": a count with its noun, singular where it is one."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
