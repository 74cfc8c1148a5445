"""The terminal view: streamed text reaches the screen gathered, whole and in order, and anything
else the engine reports comes after the text streamed before it."""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal

import pytest
from rich.console import Console
from rich.text import Text

from bot.console import FLUSH_SECONDS, DialogueView
from bot.events import Delta, TurnFinished, TurnStarted
from bot.models import Persona
from bot.text import printable
from tests.bot.test_prompts import turn


def view() -> tuple[DialogueView, io.StringIO]:
    out = io.StringIO()
    return DialogueView(Console(file=out, color_system=None, width=200), show_reasoning=True), out


async def test_streamed_words_are_printed_together_within_a_moment_whole_and_in_order():
    shown, out = view()
    shown.show(TurnStarted(0, 1, 0, Persona("Ann", "x/ann"), Decimal(0)))
    before = out.getvalue()
    for word in ("thinking ", "hard"):
        shown.show(Delta(0, word, reasoning=True))
    for word in ("Hello ", "there, ", "world."):
        shown.show(Delta(0, word))
    assert out.getvalue() == before  # held back for a moment, not printed word by word
    await asyncio.sleep(FLUSH_SECONDS * 3)
    assert out.getvalue() == before + "thinking hard\nHello there, world."


async def test_words_after_a_quiet_spell_are_printed_at_once_and_those_right_after_them_gathered():
    """Streamed text waits for the print before it, not for a timer of its own: the first words of
    a reply show as soon as they come, and words that come in batches show a batch at a time."""
    shown, out = view()
    shown.show(Delta(0, "Hello "))
    shown.show(Delta(0, "there, "))
    assert out.getvalue() == ""  # not word by word: the words that came together print together
    await asyncio.sleep(FLUSH_SECONDS / 5)
    assert out.getvalue() == "Hello there, "
    shown.show(Delta(0, "world."))
    await asyncio.sleep(0)
    assert out.getvalue() == "Hello there, "  # within FLUSH_SECONDS of the print before
    await asyncio.sleep(FLUSH_SECONDS * 3)
    assert out.getvalue() == "Hello there, world."


async def test_the_end_of_a_turn_prints_its_last_words_first():
    shown, out = view()
    shown.show(TurnStarted(0, 1, 0, Persona("Ann", "x/ann"), Decimal(0)))
    shown.show(Delta(0, "last words"))
    shown.show(TurnFinished(turn(0, 0, "last words"), Decimal(0)))  # at once: no wait for the timer
    printed = out.getvalue()
    assert "last words" in printed and printed.index("last words") < printed.index("tokens:")


@pytest.mark.parametrize(
    "console",
    [
        {"color_system": "truecolor", "force_terminal": True},
        {"color_system": "standard", "force_terminal": True, "no_color": True},
        {"color_system": None},
        {"color_system": "truecolor", "force_terminal": True, "record": True},  # rich's own print
    ],
)
def test_streamed_text_reaches_the_terminal_as_rich_would_write_it(console):
    """Streamed text skips rich's print for speed; what it writes must be what rich would: the
    same escape codes for the reasoning's dim italic, line by line, and model escapes stripped."""
    pieces = [
        ("thinking\nabout it ", True),
        ("still\x1b[2J ", True),
        ("Hello ", False),
        ("wörld\n\n日本 😀", False),
        ("\x1b]52;c;aGk=\x07", False),
    ]
    out, expected = io.StringIO(), io.StringIO()
    shown = DialogueView(Console(file=out, width=80, **console), show_reasoning=True)
    rich = Console(file=expected, width=80, **console)
    in_reasoning = False
    for text, reasoning in pieces:
        shown.show(Delta(0, text, reasoning=reasoning))  # no loop running: printed at once
        if in_reasoning and not reasoning:
            rich.print("", end="\n")
        in_reasoning = reasoning
        rich.print(Text(printable(text), "dim italic" if reasoning else ""), end="", soft_wrap=True)
    assert out.getvalue() == expected.getvalue()
    assert "\x1b[2J" not in out.getvalue() and "\x1b]52" not in out.getvalue()


class _ClosedPipe(io.StringIO):
    """An output whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_a_closed_output_met_by_the_timer_reaches_whoever_shows_the_next_event():
    """The timer's print would only reach the loop's log; the next event's caller must hear of it,
    to stop the dialogue nobody watches any more."""
    shown = DialogueView(Console(file=_ClosedPipe(), color_system=None), show_reasoning=True)
    shown.show(Delta(0, "streamed "))
    await asyncio.sleep(FLUSH_SECONDS * 3)
    with pytest.raises(BrokenPipeError):
        shown.show(Delta(0, "more"))
    shown.show(Delta(0, "after it was raised, once"))  # no second raise for the same failure
