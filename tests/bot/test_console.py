"""The terminal view: streamed text reaches the screen gathered, whole and in order, and anything
else the engine reports comes after the text streamed before it."""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal

from rich.console import Console

from bot.console import FLUSH_SECONDS, DialogueView
from bot.events import Delta, TurnFinished, TurnStarted
from bot.models import Persona
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


async def test_the_end_of_a_turn_prints_its_last_words_first():
    shown, out = view()
    shown.show(TurnStarted(0, 1, 0, Persona("Ann", "x/ann"), Decimal(0)))
    shown.show(Delta(0, "last words"))
    shown.show(TurnFinished(turn(0, 0, "last words"), Decimal(0)))  # at once: no wait for the timer
    printed = out.getvalue()
    assert "last words" in printed and printed.index("last words") < printed.index("tokens:")
