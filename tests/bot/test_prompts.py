"""What each model is shown: the role flip, the opening, names for three or more, merged roles."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.budget import count_bytes
from bot.models import Note, NoteKind, Persona, Turn, TurnStatus, Usage
from bot.prompts import Prompts, build_messages, current_window

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


# A run as the runner drives it: turns committed one at a time, interjections made at turn
# boundaries, now and then a truncation or compaction (a new window), a member forgotten (their
# interjections, their seat's words or the opening they wrote replaced), the history read again,
# and a run resumed part-way with a fresh `Prompts`.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("turn"), st.sampled_from(list(TurnStatus)), st.text(max_size=12)),
        st.tuples(st.just("interject"), st.sampled_from(["Eve", "Max"]), st.text(min_size=1, max_size=12)),
        st.tuples(st.just("window"), st.booleans(), st.text(max_size=12)),
        st.tuples(st.just("forget interjections"), st.sampled_from(["Eve", "Max"])),
        st.tuples(st.just("forget seat"), st.integers(0, 2)),
        st.tuples(st.just("forget opening")),
        st.tuples(st.just("history read again"), st.integers(0, 40)),
        st.tuples(st.just("resume")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 3), STEPS)
def test_a_prompt_extended_turn_by_turn_is_the_prompt_built_afresh(count, steps):
    """What each model is shown, and the byte bound its budget is reserved on, must not depend on
    whether its prompt was extended from the last one or built from the first turn."""
    people = [A, B, C][:count]
    prompts, opening = Prompts(), "Hi"
    turns: list[Turn] = []
    notes: list[Note] = []
    for step in steps:
        kind = step[0]
        if kind == "turn":
            seat = len(turns) % count
            turns.append(turn(len(turns), seat, step[2], step[1], count))
        elif kind == "interject":
            said = Note(1, len(turns), NoteKind.INTERJECTION, step[2], NOW, author=step[1], id=len(notes))
            notes.append(said)
        elif kind == "window":
            summary = step[2] if step[1] else None
            kind_ = NoteKind.COMPACTED if summary is not None else NoteKind.TRUNCATED
            notes.append(Note(1, len(turns), kind_, summary or "", NOW, first_kept_seq=len(turns) // 2))
        elif kind == "forget interjections":
            notes = [replace(n, text="(forgotten)", author=None) if n.author == step[1] else n for n in notes]
        elif kind == "forget seat":
            seat = step[1] % count
            people[seat] = replace(people[seat], name="someone", system_prompt="")
            turns = [replace(t, text="(forgotten)") if t.seat == seat else replace(t) for t in turns]
        elif kind == "forget opening":
            opening = "(forgotten)"
        elif kind == "history read again":  # the same turns as new objects, one of them changed
            turns = [replace(t, text=f"{t.text}!" if t.seq == step[1] else t.text) for t in turns]
        else:
            prompts = Prompts()
        seat = len(turns) % count
        window = current_window(notes)
        built = prompts.build(people, seat, opening, turns, window, notes)
        expected = build_messages(people, seat, opening, turns, window, notes)
        assert built.messages == expected
        assert built.size == count_bytes(expected)
        if len(turns) >= count:
            earlier = len(turns) - count
            known = prompts.size_at(seat, earlier, window)
            if known is not None:
                assert known == count_bytes(
                    build_messages(people, seat, opening, turns[:earlier], window, notes)
                )
