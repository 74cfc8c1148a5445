"""What Voices forgets: a member's words and identity in a server's dialogues, on request, and whole
dialogues once they are older than the retention time.

Forgetting replaces what the member wrote (their turns in a human seat, their interjections, the
openings they gave) with a marker saying it was removed at their request, and removes their id and
name from those dialogues. The copies a fork or a continuation carried over are forgotten with the
originals. Money records stay, anonymised: the dialogue still cost what it cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.database import Writer
from bot.models import HUMAN, NoteKind
from bot.store import Store
from bot.text import counted

MARKER = "[removed at the member's request]"
#: What a forgotten member's seat is called from then on.
REMOVED_NAME = "Removed member"
REMOVED_SEAT = f"{HUMAN}0"


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What a forget request changed."""

    turns: int
    interjections: int
    openings: int
    seats: int

    def describe(self) -> str:
        return (
            f"{counted(self.turns, 'turn')}, {counted(self.interjections, 'interjection')} and "
            f"{counted(self.openings, 'opening')} replaced, and {counted(self.seats, 'seat')} made anonymous"
        )


async def forget_member(store: Store, guild_id: int, member_id: int, names: Sequence[str] = ()) -> Forgotten:
    """Forget what member `member_id` wrote in guild `guild_id`'s dialogues, in one transaction.

    Interjections made before their author's id was recorded are matched by the `names` given
    (the member's current names): the only trace they left.
    """
    # The server's dialogues, as a sub-query on $1: no list of ids to bind, however many there are.
    inside = "dialogue_id IN (SELECT dialogue_id FROM rooms WHERE guild_id = $1)"
    seat = f"{HUMAN}{member_id}"
    named = ", ".join(f"${n}" for n in range(5, 5 + len(names))) or "NULL"
    async with store.transaction() as conn:
        turns = await conn.update(
            f"""UPDATE turns SET text = $2, reasoning = ''
                 WHERE {inside} AND (dialogue_id, seat) IN
                       (SELECT dialogue_id, seat FROM participants WHERE model = $3)""",
            (guild_id, MARKER, seat),
        )
        seats = await conn.update(
            f"""UPDATE participants SET name = $2, model = $3, system_prompt = ''
                 WHERE {inside} AND model = $4""",
            (guild_id, REMOVED_NAME, REMOVED_SEAT, seat),
        )
        interjections = await conn.update(
            f"""UPDATE notes SET text = $2, author = NULL, author_id = NULL
                 WHERE {inside} AND kind = $3
                   AND (author_id = $4 OR (author_id IS NULL AND author IN ({named})))""",
            (guild_id, MARKER, str(NoteKind.INTERJECTION), str(member_id), *names),
        )
        openings = await _forget_openings(conn, guild_id, member_id)
        await conn.execute(
            "UPDATE rooms SET starter_id = 0 WHERE guild_id = $1 AND starter_id = $2", (guild_id, member_id)
        )
    return Forgotten(turns, interjections, openings, seats)


async def _forget_openings(conn: Writer, guild_id: int, member_id: int) -> int:
    """Replace the openings the member gave, and the same openings carried into forks and
    continuations of those dialogues (a child that kept its parent's opening)."""
    rows = await conn.fetchall(
        "SELECT d.id, d.opening FROM dialogues d JOIN rooms r ON r.dialogue_id = d.id "
        "WHERE r.guild_id = $1 AND r.starter_id = $2",
        (guild_id, member_id),
    )
    todo = [(r["id"], r["opening"]) for r in rows]
    changed = 0
    while todo:
        dialogue_id, opening = todo.pop()
        changed += await conn.update(
            "UPDATE dialogues SET opening = $1 WHERE id = $2 AND opening != $3", (MARKER, dialogue_id, MARKER)
        )
        children = await conn.fetchall(
            "SELECT id FROM dialogues WHERE parent_id = $1 AND opening = $2", (dialogue_id, opening)
        )
        todo += [(c["id"], opening) for c in children]
    return changed


async def delete_older(store: Store, cutoff: datetime) -> list[int]:
    """Delete the dialogues that ended before `cutoff`, with everything that hangs off them; return
    their ids. Running and paused dialogues are kept whatever their age."""
    async with store.transaction() as conn:
        rows = await conn.fetchall(
            "SELECT id FROM dialogues "
            "WHERE status IN ('finished', 'stopped', 'failed') AND ended_at < $1 ORDER BY id",
            (cutoff.isoformat(),),
        )
        ids = [r[0] for r in rows]
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ", ".join(f"${n}" for n in range(1, len(batch) + 1))
            await conn.execute(f"DELETE FROM dialogues WHERE id IN ({marks})", batch)
    return ids
