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
# Matched at a position within the line (`match(line, pos)`), so each depth is not copied out.
_CONTAINER = re.compile(r"[ \t]+|>|(?:[-+*]|\d{1,9}[.)])(?=[ \t]|$)")
# A heading or a setext underline; a thematic break is `_thematic_break`'s.
_BLOCK = re.compile(r"#{1,6}(?:[ \t]|$)|=+[ \t]*$|-+[ \t]*$")
# The start of raw HTML, a comment, a processing instruction or an autolink, not already escaped
# (an even number of backslashes before it escape each other, not it).
_HTML = re.compile(r"(?<!\\)((?:\\\\)*)<(?=[A-Za-z/!?])")
_EMPHASIS = re.compile(r"(?<!\\)((?:\\\\)*)([*_])")
_LEADING_EMPHASIS = re.compile(r"^([*_]+)")


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
    # Checked at every depth: a lone "-" is an empty list item and a setext underline both. Each
    # depth is looked at where it begins, each byte about once: a line of 10,000 list markers
    # ("- - - …", as a model stuck in a loop writes) cost 4.8 s when every depth was copied out
    # and searched to the end for a thematic break.
    pos = 0
    tails: dict[str, int] = {}
    while True:
        if _BLOCK.match(line, pos) or (
            pos < len(line)
            and line[pos] in "-*_"
            and line[-1] in "-*_ \t"  # a break ends the line; most list items end otherwise
            and _thematic_break(line, pos, tails)
        ):
            return f"{line[:pos]}\\{line[pos:]}"
        match = _CONTAINER.match(line, pos)
        if match is None:
            break
        pos = match.end()
    rest = line[pos:]
    # Renderers trim a paragraph with Unicode's idea of white space, not only spaces and tabs.
    lead = len(rest) - len(rest.lstrip())
    prefix, content = line[: len(line) - len(rest) + lead], rest[lead:]
    if _speaker_like(content):
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


def _thematic_break(line: str, pos: int, tails: dict[str, int]) -> bool:
    """Whether the line from `pos` is a thematic break: three or more of one of `-*_`, with only
    spaces and tabs between and after them. `tails` keeps, for each of the three, where the run of
    it and blanks that ends the line begins, found once a line."""
    mark = line[pos]
    if (tail := tails.get(mark)) is None:
        tail = tails[mark] = len(line.rstrip(mark + " \t"))
    return pos >= tail and line.count(mark, pos) >= 3


def _speaker_like(content: str) -> bool:
    """Whether a line reads as a speaker's label: a bold name, then a colon, then at most the
    emphasis closing it ("**Basil:**", "__Basil__:"). Stripped from the end, not matched by a
    regular expression: one that let white space, emphasis and white space follow the colon took
    time quadratic in the white space, and a reply's line of 16,000 spaces took 1.3 s to write
    into the transcript."""
    if not content.startswith(("**", "__")):
        return False
    label = content.rstrip().rstrip("*_").rstrip()
    return len(label) > 2 and label.endswith(":")
