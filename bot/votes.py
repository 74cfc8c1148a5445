"""The audience's votes: opened at a dialogue's end, closed with their tally; what a front end
needs to keep of a poll it posted, and nothing of how it posted it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.errors import InputError
from bot.store import Store

#: What the audience is asked unless a server words it its own way.
DEFAULT_QUESTION = "Who made the stronger case?"
#: How long a vote stays open unless a server chooses; Discord allows 1 hour to 32 days.
DEFAULT_HOURS = 24
MAX_HOURS = 32 * 24
#: Discord's limits on a poll: its question, each answer, and how many answers.
QUESTION_LIMIT, ANSWER_LIMIT, MAX_ANSWERS = 300, 55, 10


@dataclass(frozen=True, slots=True)
class Posted:
    """Where an open vote lives, so that its tally can be read when it closes."""

    dialogue_id: int
    channel_id: int
    message_id: int


def check_question(question: str) -> str:
    """Return the question as a poll can carry it, or raise InputError saying what to change."""
    question = " ".join(question.split())
    if not question:
        raise InputError("the poll question is empty; write one, or leave it out for the default")
    if len(question) > QUESTION_LIMIT:
        raise InputError(f"the poll question has {len(question)} characters; Discord takes {QUESTION_LIMIT}")
    return question


def check_hours(hours: int) -> int:
    if not 1 <= hours <= MAX_HOURS:
        raise InputError(f"a poll stays open 1 to {MAX_HOURS} hours (32 days), not {hours}")
    return hours


def answers_for(names: Sequence[str]) -> list[str]:
    """Return one answer per participant as a poll can show them: cut to Discord's length, and
    told apart if cutting made two alike."""
    answers: list[str] = []
    for name in names[:MAX_ANSWERS]:
        answer = name[:ANSWER_LIMIT].strip() or "?"
        while answer in answers:
            answer = f"{answer[: ANSWER_LIMIT - 2]} ·"
        answers.append(answer)
    return answers


class VoteStore:
    """Votes in the dialogue database, one per dialogue at most."""

    def __init__(self, store: Store):
        self._store = store

    async def open(
        self,
        dialogue_id: int,
        question: str,
        answers: Sequence[str],
        where: tuple[int, int],
        opened_at: datetime,
        closes_at: datetime,
    ) -> None:
        """Record a vote just posted (channel and message ids in `where`)."""
        async with self._store.transaction() as conn:
            await conn.execute(
                "INSERT INTO votes (dialogue_id, question, answers, channel_id, message_id, opened_at, "
                "closes_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                (
                    dialogue_id,
                    question,
                    json.dumps(list(answers), ensure_ascii=False),
                    where[0],
                    where[1],
                    opened_at.isoformat(),
                    closes_at.isoformat(),
                ),
            )

    async def earliest(self) -> datetime | None:
        """Return when the first open vote closes, if any is open."""
        rows = await self._store.fetchall("SELECT min(closes_at) FROM votes WHERE closed_at IS NULL")
        return datetime.fromisoformat(rows[0][0]) if rows[0][0] else None

    async def due(self, now: datetime) -> list[Posted]:
        """Return the open votes whose time is up."""
        rows = await self._store.fetchall(
            "SELECT dialogue_id, channel_id, message_id FROM votes "
            "WHERE closed_at IS NULL AND closes_at <= $1 ORDER BY closes_at",
            (now.isoformat(),),
        )
        return [Posted(r["dialogue_id"], r["channel_id"], r["message_id"]) for r in rows]

    async def close(self, dialogue_id: int, counts: Sequence[int] | None, now: datetime) -> bool:
        """Keep the tally (None: it could not be read) and close the vote; False if it was closed
        already (another process, or an earlier tick, got there first)."""
        async with self._store.transaction() as conn:
            changed = await conn.update(
                "UPDATE votes SET counts = $1, closed_at = $2 WHERE dialogue_id = $3 AND closed_at IS NULL",
                (json.dumps(list(counts)) if counts is not None else None, now.isoformat(), dialogue_id),
            )
        return changed == 1
