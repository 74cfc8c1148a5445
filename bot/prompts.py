"""What each model is shown: its own system prompt, its turns as `assistant`, everyone else's as `user`,
the part of the history a compaction replaced, and where its prompt cache should break.

Pure functions over the committed turns; see UniversalBackrooms' role flip and pidgin's
"perspective-based role transformation" for the idea.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.models import Note, NoteKind, Persona, Turn, TurnStatus

ChatMessage = dict[str, str]


@dataclass(frozen=True, slots=True)
class Window:
    """The part of the history the models see: turns from `first_kept` on, and what stands for the rest.

    `since` is the turn from which this window applies; a request made before it is not a prefix
    of one made after.
    """

    first_kept: int = 0
    summary: str | None = None
    since: int = 0


def current_window(notes: Sequence[Note], at: int | None = None) -> Window:
    """Return the window the latest truncation or compaction left (the whole history if none);
    with `at`, the window turn `at` was asked under."""
    for note in reversed(notes):
        if at is not None and note.before_seq > at:
            continue
        if note.kind.is_context and note.first_kept_seq is not None:
            summary = note.text if note.kind is NoteKind.COMPACTED else None
            return Window(note.first_kept_seq, summary, note.before_seq)
    return Window()


def build_messages(
    participants: Sequence[Persona],
    seat: int,
    opening: str,
    turns: Sequence[Turn],
    window: Window = Window(),
    notes: Sequence[Note] = (),
) -> list[ChatMessage]:
    """Return the chat messages the participant in `seat` sees before its next turn.

    The opening is the first `user` message. With more than two participants, other speakers'
    turns carry their name, so a model can tell them apart. A spectator's interjection is a `user`
    message in its place, labelled with who said it. Consecutive messages of one role are merged,
    since several providers reject two `user` messages in a row.
    """
    said = interjections_by_turn(notes)
    persona = participants[seat]
    named = len(participants) > 2
    messages: list[ChatMessage] = []
    if persona.system_prompt:
        messages.append({"role": "system", "content": persona.system_prompt})
    _append(messages, "user", opening)
    if window.first_kept:
        if window.summary is not None:
            _append(
                messages,
                "user",
                f"[Summary of the conversation's first {window.first_kept} turns, which are no longer "
                f"shown:]\n{window.summary}",
            )
        else:
            _append(messages, "user", f"[The conversation's first {window.first_kept} turns are left out.]")
    # Interjections from before the window went with the turns it left out.
    for turn in turns[window.first_kept :]:
        for text in said.get(turn.seq, ()):
            _append(messages, "user", text)
        if turn.status is not TurnStatus.OK:
            continue  # an empty or cut-off reply is kept in the transcript, never fed back
        if turn.seat == seat:
            _append(messages, "assistant", turn.text)
        else:
            text = f"{turn.speaker}: {turn.text}" if named else turn.text
            _append(messages, "user", text)
    for text in said.get(len(turns), ()):
        _append(messages, "user", text)
    return messages


def interjections_by_turn(notes: Sequence[Note]) -> dict[int, list[str]]:
    """Return the interjections as the models read them, keyed by the turn each comes before."""
    said: dict[int, list[str]] = {}
    for note in notes:
        if note.kind is NoteKind.INTERJECTION:
            said.setdefault(note.before_seq, []).append(interjection_text(note))
    return said


def interjection_text(note: Note) -> str:
    """Return a spectator's interjection as the models read it: who said it, and what."""
    return f"[{note.author}, watching, interjects:] {note.text}"


def cache_breakpoints(messages: Sequence[ChatMessage]) -> tuple[int, ...]:
    """Return the messages to mark for a model that caches only where told (Anthropic allows four).

    The system prompt never changes; the message before the speaker's last reply ended its previous
    request, so that prefix is already cached and is read back; the last message makes the whole of
    this prompt the prefix its next request reads.
    """
    marks = set()
    if messages and messages[0]["role"] == "system":
        marks.add(0)
    for index in range(len(messages) - 1, 0, -1):
        if messages[index]["role"] == "assistant":
            marks.add(index - 1)
            break
    if messages:
        marks.add(len(messages) - 1)
    return tuple(sorted(marks))


def _append(messages: list[ChatMessage], role: str, content: str) -> None:
    if messages and messages[-1]["role"] == role:
        messages[-1] = {"role": role, "content": f"{messages[-1]['content']}\n\n{content}"}
    else:
        messages.append({"role": role, "content": content})
