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
# Bidirectional embeddings, overrides and isolates go too: where a terminal lays text out both
# ways, one reverses how the rest of a line reads ("Trojan Source"). The marks U+200E/U+200F, which
# right-to-left text uses, stay.
_CONTROLS = r"\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROLS}]")
# An error line shows them, and newlines, as escapes: it stays one line and names what was wrong
# (an escape code pasted into a persona's name) without the terminal acting on it.
_UNSEEN = re.compile(rf"[\n{_CONTROLS}]")


def repair(text: str) -> str:
    """Return text that encodes as UTF-8: each lone surrogate becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def printable(text: str) -> str:
    """Return text a terminal shows as text: no escape sequences, no control characters but tab and
    newline (a carriage return could overwrite what was shown before it), no bidirectional
    overrides."""
    if text.isprintable():
        return text
    return _CONTROL.sub("", _SEQUENCE.sub("", repair(text)))


def visible(text: str) -> str:
    """Return text for a one-line error: each control character, newline and bidirectional
    override written as its escape (\\x1b, \\n, \\u202e)."""
    return _UNSEEN.sub(lambda found: found.group().encode("unicode_escape").decode(), repair(text))


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
        long = [s for s in secrets if len(s) >= PARTIAL]
        self._grams = frozenset(s[i : i + PARTIAL] for s in long for i in range(len(s) - PARTIAL + 1))
        self._alphabet = "".join(sorted(set("".join(long))))
        # Any run of PARTIAL characters the secrets are made of: without one, nothing can be hidden.
        self._run = re.compile(f"[{re.escape(self._alphabet)}]{{{PARTIAL}}}") if long else None

    def __call__(self, text: str) -> str:
        text = _WEBHOOK_TOKEN.sub(rf"\1{MASK}", text)
        for secret in self._short:
            text = text.replace(secret, MASK)
        if self._run is None or len(text) < PARTIAL or self._run.search(text) is None:
            return text
        hidden = bytearray(len(text))
        return _hide(text, hidden) if _mark(text, self._grams, hidden) else text

    def stream(self) -> StreamMask | None:
        """Return a mask for one text that arrives in pieces, or None when there is nothing to hide.

        Only secrets of PARTIAL characters or more are hidden in it: a streamed reply is a model's
        words, where a short "secret" would be an ordinary word."""
        return StreamMask(self._grams, self._alphabet, self._run) if self._run else None


class StreamMask:
    """Mask secrets in a text that arrives in pieces (a streamed reply) as Masker does the whole:
    the characters at the end of a piece that could begin a secret wait for the next piece, so a
    secret split between pieces is still masked. Only those wait, and only while no other character
    has come after them, so a reply shows as it streams."""

    __slots__ = ("_grams", "_alphabet", "_run", "_pending", "_hidden", "_masked")

    def __init__(self, grams: frozenset[str], alphabet: str, run: re.Pattern[str]):
        """`alphabet`: the characters the secrets are made of; `run`: finds PARTIAL of them in a row."""
        self._grams = grams
        self._alphabet = alphabet
        self._run = run
        self._pending = ""
        #: Which waiting characters are part of a secret already (None: none are).
        self._hidden: bytearray | None = None
        #: The last character given out was masked (a secret split between pieces is one MASK).
        self._masked = False

    def feed(self, piece: str) -> str:
        """Return what of the text so far can be shown, masked; keep back what could begin a secret."""
        text = self._pending + piece
        size = len(text)
        # Only a run of the secrets' characters can hold part of one, and a part of fewer than PARTIAL
        # characters can grow into one with the next piece only at the end of the text.
        end = len(text.rstrip(self._alphabet))
        shown = end if size - end < PARTIAL else size - PARTIAL + 1
        if self._hidden is None and (size < PARTIAL or self._run.search(text) is None):
            # The common case: nothing to hide, and most often nothing to keep back either.
            if shown == size:
                self._pending = ""
                self._masked = False
                return text
            self._pending = text[shown:]
            if shown:
                self._masked = False
            return text[:shown]
        hidden = self._hidden + bytearray(len(piece)) if self._hidden else bytearray(len(text))
        _mark(text, self._grams, hidden)
        # A waiting character that is part of a secret waits on with it, so it stays masked even if
        # the next piece does not go on with the secret (a run that began in text already shown).
        out = _hide(text[:shown], hidden[:shown], self._masked)
        if shown:
            self._masked = bool(hidden[shown - 1])
        self._pending = text[shown:]
        rest = hidden[shown:]
        self._hidden = rest if any(rest) else None
        return out

    def flush(self) -> str:
        """Return what is still kept back, masked: the text has ended."""
        text, hidden = self._pending, self._hidden
        self._pending, self._hidden = "", None
        if hidden is None:
            if text:
                self._masked = False
            return text
        out = _hide(text, hidden, self._masked)
        self._masked = bool(hidden[-1])
        return out


def _mark(text: str, grams: frozenset[str], hidden: bytearray) -> bool:
    """Mark in `hidden` each character of `text` inside a run of PARTIAL characters of a secret;
    return whether any was."""
    found = False
    for start in range(len(text) - PARTIAL + 1):
        if text[start : start + PARTIAL] in grams:
            hidden[start : start + PARTIAL] = b"\x01" * PARTIAL
            found = True
    return found


def _hide(text: str, hidden: bytearray, masked: bool = False) -> str:
    """Return text with each run of marked characters made one MASK (none where the run goes on from
    a MASK already given out: `masked`)."""
    out: list[str] = []
    for char, flag in zip(text, hidden, strict=True):
        if not flag:
            out.append(char)
        elif not masked:
            out.append(MASK)
        masked = bool(flag)
    return "".join(out)


def counted(number: int, noun: str) -> str:
    """Return "1 round", "3 rounds": a count with its noun, singular where it is one."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
