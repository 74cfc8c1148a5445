"""What each model is shown: its own system prompt, its turns as `assistant`, everyone else's as `user`.

Pure functions over the committed turns; see UniversalBackrooms' role flip and pidgin's
"perspective-based role transformation" for the idea.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.models import Persona, Turn, TurnStatus

ChatMessage = dict[str, str]


def build_messages(
    participants: Sequence[Persona], seat: int, opening: str, turns: Sequence[Turn]
) -> list[ChatMessage]:
    """Return the chat messages the participant in `seat` sees before its next turn.

    The opening is the first `user` message. With more than two participants, other speakers'
    turns carry their name, so a model can tell them apart. Consecutive messages of one role are
    merged, since several providers reject two `user` messages in a row.
    """
    persona = participants[seat]
    named = len(participants) > 2
    messages: list[ChatMessage] = []
    if persona.system_prompt:
        messages.append({"role": "system", "content": persona.system_prompt})
    _append(messages, "user", opening)
    for turn in turns:
        if turn.status is not TurnStatus.OK:
            continue  # an empty or cut-off reply is kept in the transcript, never fed back
        if turn.seat == seat:
            _append(messages, "assistant", turn.text)
        else:
            text = f"{turn.speaker}: {turn.text}" if named else turn.text
            _append(messages, "user", text)
    return messages


def _append(messages: list[ChatMessage], role: str, content: str) -> None:
    if messages and messages[-1]["role"] == role:
        messages[-1] = {"role": role, "content": f"{messages[-1]['content']}\n\n{content}"}
    else:
        messages.append({"role": role, "content": content})
