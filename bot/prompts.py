"""What each model is shown: its own system prompt, its turns as `assistant`, everyone else's as `user`,
the part of the history a compaction replaced, and where its prompt cache should break.

Pure functions over the committed turns; see UniversalBackrooms' role flip and pidgin's
"perspective-based role transformation" for the idea.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.budget import count_bytes
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
    messages = _head(participants[seat], opening, window)
    # Interjections from before the window went with the turns it left out.
    _add_turns(messages, seat, len(participants) > 2, turns[window.first_kept :], said)
    _add_said(messages, said.get(len(turns), ()))
    return messages


@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages a seat is shown before a turn, and their byte bound (`budget.count_bytes`)."""

    messages: list[ChatMessage]
    size: int


@dataclass(frozen=True, slots=True)
class _Built:
    """A seat's last prompt: its messages up to the interjections that close it (what the next
    prompt extends), what must be unchanged for it to, and its byte bound with and without them."""

    window: Window
    upto: int
    last_turn: Turn | None
    said_before: tuple[tuple[int | None, str], ...]
    messages: list[ChatMessage]
    size: int
    closed_size: int


class Prompts:
    """Each seat's prompt as last built in a run, so that the next one extends it.

    Built afresh, a prompt walks the whole history, so a dialogue of n turns costs n² (at 200
    turns, 0.3 ms a turn for the prompts alone). Between one seat's calls the history only grows
    by the turns since, so the last prompt, copied, takes them on. Anything else (new seats or a
    new opening, a new window, words a forgotten member wrote taken out) builds it afresh. Either
    way the messages are those `build_messages` returns.
    """

    def __init__(self) -> None:
        self._built: dict[int, _Built] = {}
        self._dialogue: tuple[tuple[Persona, ...], str] = ((), "")

    def build(
        self,
        participants: Sequence[Persona],
        seat: int,
        opening: str,
        turns: Sequence[Turn],
        window: Window,
        notes: Sequence[Note],
    ) -> Prompt:
        """Return what `build_messages` returns for the same arguments, with its byte bound."""
        if self._dialogue != (dialogue := (tuple(participants), opening)):
            self._built.clear()
            self._dialogue = dialogue
        said = interjections_by_turn(notes)
        last = self._built.get(seat)
        if last is None or not _extends(last, turns, window, notes):
            head = _head(participants[seat], opening, window)
            size = count_bytes(head)
            last = _Built(window, window.first_kept, None, (), head, size, size)
        messages = list(last.messages)
        _add_turns(messages, seat, len(participants) > 2, turns[last.upto :], said)
        size = _grown(last.messages, last.size, messages)
        closed = list(messages)
        _add_said(closed, said.get(len(turns), ()))
        upto = max(len(turns), window.first_kept)
        last_turn = turns[-1] if turns else None
        closed_size = _grown(messages, size, closed)
        self._built[seat] = _Built(
            window, upto, last_turn, _said_before(notes, upto), messages, size, closed_size
        )
        return Prompt(closed, closed_size)

    def size_at(self, seat: int, upto: int, window: Window) -> int | None:
        """Return the byte bound of the seat's last prompt, as sent, if it was built on `upto` turns
        under `window`; else None."""
        last = self._built.get(seat)
        if last is None or last.upto != upto or last.window != window:
            return None
        return last.closed_size


def _extends(last: _Built, turns: Sequence[Turn], window: Window, notes: Sequence[Note]) -> bool:
    """Whether the history is still the one `last` was built on, with turns added at its end."""
    return (
        last.window == window
        and last.upto <= len(turns)
        and (last.upto <= window.first_kept or turns[last.upto - 1] is last.last_turn)
        and last.said_before == _said_before(notes, last.upto)
    )


def _grown(before: list[ChatMessage], size: int, after: list[ChatMessage]) -> int:
    """Return the byte bound of `after`, a copy of `before` with messages added, from `before`'s:
    only the added messages and the last one before them (a message of its role merges into it)
    are counted."""
    if len(after) == len(before) and after[-1] is before[-1]:
        return size
    return size - count_bytes(before[-1:]) + count_bytes(after[len(before) - 1 :])


def _said_before(notes: Sequence[Note], seq: int) -> tuple[tuple[int | None, str], ...]:
    """Return the interjections shown before turn `seq`: a prompt built on those turns holds them."""
    return tuple((n.id, n.text) for n in notes if n.kind is NoteKind.INTERJECTION and n.before_seq < seq)


def _head(persona: Persona, opening: str, window: Window) -> list[ChatMessage]:
    """Return the messages before the first turn shown: the system prompt, the opening, and what
    stands for the turns a window left out."""
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
    return messages


def _add_turns(
    messages: list[ChatMessage], seat: int, named: bool, turns: Sequence[Turn], said: dict[int, list[str]]
) -> None:
    """Add these turns as the seat sees them, each after the interjections made before it."""
    for turn in turns:
        _add_said(messages, said.get(turn.seq, ()))
        if turn.status is not TurnStatus.OK:
            continue  # an empty or cut-off reply is kept in the transcript, never fed back
        if turn.seat == seat:
            _append(messages, "assistant", turn.text)
        else:
            _append(messages, "user", f"{turn.speaker}: {turn.text}" if named else turn.text)


def _add_said(messages: list[ChatMessage], said: Sequence[str]) -> None:
    for text in said:
        _append(messages, "user", text)


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
