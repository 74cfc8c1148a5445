"""What a model writes, however it is shaped, costs time in proportion to its length wherever a
turn's text goes: the transcript's Markdown, the look for circles, Discord's messages. A model
stuck on one character writes lines of thousands of list markers, spaces or newlines, and work
that grew with the square of such a line held the event loop, and every dialogue of the process
with it, for seconds: 20,000 characters of "- - - …" took 4.8 s to write into the transcript."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from bot.loops import Lookout, LoopThresholds
from bot.markdown import escape_block
from cogs._format import split_pieces
from tests.bot.test_loops import NAMES, turns_of

SHAPES: dict[str, Callable[[int], str]] = {
    "list markers": lambda n: "- " * (n // 2) + "x",
    "quote markers": lambda n: "> " * (n // 2) + "x",
    "stars between spaces": lambda n: "* " * (n // 2) + "_",
    "spaces after a bold label": lambda n: "**Basil:" + " " * n + "x",
    "blank lines": lambda n: "\n" * n + "x",
    "blank lines before a label": lambda n: " \n" * (n // 2) + "Basil:",
    "colons": lambda n: "**" + ": " * (n // 2) + "x",
    "backslashes": lambda n: "\\" * n + "*x",
}


def _seconds(text: str) -> float:
    """CPU seconds for a turn of `text` to go where a turn goes (the least of three tries)."""
    tries = []
    for _ in range(3):
        began = time.process_time()
        escape_block(text)
        Lookout(NAMES, LoopThresholds()).notice(turns_of([text, text]))
        split_pieces(text)
        tries.append(time.process_time() - began)
    return max(min(tries), 1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_reply_costs_in_proportion_to_its_length_whatever_its_shape(shape: str):
    make = SHAPES[shape]
    # Four times the text: about four times the work where it is linear, sixteen where it is not.
    assert _seconds(make(80_000)) < 9 * _seconds(make(20_000))
