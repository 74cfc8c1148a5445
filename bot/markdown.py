"""Text that others wrote (models, members), made inert inside the Markdown transcript: under a
CommonMark renderer it can neither forge the transcript's structure nor hide it, and ordinary
replies keep their own Markdown (emphasis, lists, code) as they wrote it.

What structure means here: headings, thematic breaks and setext underlines (also inside lists and
quotes), raw HTML and comments, a paragraph that is nothing but a bold name and a colon (a speaker
line) or an emphasised bracket or sign (a token line, a note), and a code fence left open.
"""

from __future__ import annotations

import re

from bot.text import printable

# A code fence per CommonMark: up to three spaces, then three or more backticks (whose info string
# may hold no backtick) or tildes. It closes on the same character, at least as long, alone.
_OPEN_FENCE = re.compile(r"^ {0,3}(?:(`{3,})[^`]*|(~{3,}).*)$")
_CLOSE_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
# What a line may start with before its content: indentation, quote markers and list markers.
_CONTAINER = re.compile(r"^(?:[ \t]+|>|(?:[-+*]|\d{1,9}[.)])(?=[ \t]|$))")
# A heading, a thematic break, or a setext underline.
_BLOCK = re.compile(r"^(?:#{1,6}(?:[ \t]|$)|([-*_])(?:[ \t]*\1){2,}[ \t]*$|=+[ \t]*$|-+[ \t]*$)")
# The start of raw HTML, a comment, a processing instruction or an autolink, not already escaped
# (an even number of backslashes before it escape each other, not it).
_HTML = re.compile(r"(?<!\\)((?:\\\\)*)<(?=[A-Za-z/!?])")
_EMPHASIS = re.compile(r"(?<!\\)((?:\\\\)*)([*_])")
_LEADING_EMPHASIS = re.compile(r"^([*_]+)")
_SPEAKER_LIKE = re.compile(r"^(\*\*|__).*:\s*[*_]*\s*$")


def escape_block(text: str) -> str:
    """Return text that stays one block of the transcript's text, whatever it holds.

    Control characters are dropped (the file is read in terminals too); a code fence it opens and
    never closes is closed at its end.
    """
    out: list[str] = []
    fence: str | None = None
    for line in printable(text).split("\n"):
        if fence is not None:
            closing = _CLOSE_FENCE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = None
            out.append(line)
            continue
        opening = _OPEN_FENCE.match(line)
        if opening:
            fence = opening.group(1) or opening.group(2)
            out.append(line)
            continue
        out.append(_escape_line(line))
    if fence is not None:
        out.append(fence)
    return "\n".join(out)


def _escape_line(line: str) -> str:
    if "<" in line:  # the search alone cost most of a 1,000-turn render, for lines with no "<"
        line = _HTML.sub(r"\1\\<", line)
    # Checked at every depth: a lone "-" is an empty list item and a setext underline both.
    rest = line
    while True:
        if _BLOCK.match(rest):
            cut = len(line) - len(rest)
            return f"{line[:cut]}\\{rest}"
        match = _CONTAINER.match(rest)
        if match is None:
            break
        rest = rest[match.end() :]
    # Renderers trim a paragraph with Unicode's idea of white space, not only spaces and tabs.
    lead = len(rest) - len(rest.lstrip())
    prefix, content = line[: len(line) - len(rest) + lead], rest[lead:]
    if _SPEAKER_LIKE.match(content):
        return prefix + _EMPHASIS.sub(r"\1\\\2", content)
    marker = _LEADING_EMPHASIS.match(content)
    if marker is None:
        return line
    run = marker.group(1)
    after = content[len(run) :]
    # Emphasis that opens on a sign or a bracket ("*[tokens: …]*", "*⚠ …*"), or that does not close
    # on its own line, could pass for one of the transcript's own lines: shown as the characters.
    if (after and not after[0].isalnum() and not after[0].isspace()) or run not in after:
        return prefix + run.replace("*", "\\*").replace("_", "\\_") + after
    return line
