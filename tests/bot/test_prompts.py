"""What each model is shown: the role flip, the opening, names for three or more, merged roles."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from bot.models import Persona, Turn, TurnStatus, Usage
from bot.prompts import build_messages

NOW = datetime(2026, 1, 1, tzinfo=UTC)
A = Persona("Ann", "x/a", "You are Ann.")
B = Persona("Bob", "x/b", "You are Bob.")
C = Persona("Cy", "x/c", "")


def turn(seq: int, seat: int, text: str, status: TurnStatus = TurnStatus.OK, count: int = 2) -> Turn:
    name = ("Ann", "Bob", "Cy")[seat]
    return Turn(
        1,
        seq,
        seq // count + 1,
        seat,
        name,
        status,
        text,
        "",
        Usage(),
        Decimal(0),
        "reported",
        "x",
        "stop",
        0,
        1,
        NOW,
        NOW,
    )


def test_first_speaker_gets_the_opening_as_user():
    assert build_messages([A, B], 0, "Hi", []) == [
        {"role": "system", "content": "You are Ann."},
        {"role": "user", "content": "Hi"},
    ]


def test_roles_flip_between_the_two_speakers():
    turns = [turn(0, 0, "a1"), turn(1, 1, "b1"), turn(2, 0, "a2")]
    assert build_messages([A, B], 1, "Hi", turns) == [
        {"role": "system", "content": "You are Bob."},
        {"role": "user", "content": "Hi\n\na1"},
        {"role": "assistant", "content": "b1"},
        {"role": "user", "content": "a2"},
    ]
    assert [m["role"] for m in build_messages([A, B], 0, "Hi", turns)] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


def test_with_three_speakers_others_are_named_and_merged_into_one_user_message():
    turns = [turn(0, 0, "a1", count=3), turn(1, 1, "b1", count=3)]
    messages = build_messages([A, B, C], 2, "Hi", turns)
    assert messages == [{"role": "user", "content": "Hi\n\nAnn: a1\n\nBob: b1"}]


def test_empty_and_cut_off_turns_are_never_fed_back():
    turns = [turn(0, 0, "", TurnStatus.EMPTY), turn(1, 1, "partial", TurnStatus.CANCELLED)]
    assert build_messages([A, B], 0, "Hi", turns) == [
        {"role": "system", "content": "You are Ann."},
        {"role": "user", "content": "Hi"},
    ]
