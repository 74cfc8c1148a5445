"""Who spent what: spend, dialogues and tokens by member, model, day or server, exact to the digit.

Figures come from the same records as the transcripts. A dialogue's spend is its stored total, so a
report by member, day or server adds up to the transcripts' totals exactly. By model, each call is
counted once under the model that answered it (turns and summaries; copies carried into a fork or
a continuation are not counted again), and what no model row holds, calls cut off by a crash and
charged at their reservation, is shown as its own line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bot.database import Row
from bot.models import plain
from bot.store import Store

GROUPINGS = ("member", "model", "day", "server")
#: The model line for spend that no turn or summary holds: calls a crash cut off, settled later.
UNSETTLED = "(calls cut off by a crash)"


@dataclass(slots=True)
class UsageRow:
    """One line of a report: a member, model, day or server, and what went through it."""

    key: str
    dialogues: set[int] = field(default_factory=set)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spent_usd: Decimal = Decimal(0)

    def add(self, dialogue_id: int, prompt: int, completion: int, cost: Decimal) -> None:
        self.dialogues.add(dialogue_id)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.spent_usd += cost


async def report(
    store: Store,
    by: str,
    since: datetime | None = None,
    guild_id: int | None = None,
    member_id: int | None = None,
) -> list[UsageRow]:
    """Return the spend grouped `by` member, model, day or server, most spent first."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by}")
    dialogues = await store.spending(since, guild_id, member_id)
    rows: dict[str, UsageRow] = {}

    def row(key: str) -> UsageRow:
        return rows.setdefault(key, UsageRow(key))

    if by != "model":
        for d in dialogues:
            row(_key(by, d)).add(d["id"], d["prompt_tokens"], d["completion_tokens"], Decimal(d["spent_usd"]))
    else:
        spent = {d["id"]: Decimal(d["spent_usd"]) for d in dialogues}
        held = dict.fromkeys(spent, Decimal(0))
        for call in await store.spending_by_model(since, guild_id, member_id):
            cost = Decimal(call["cost_usd"])
            row(call["model"]).add(
                call["dialogue_id"], call["prompt_tokens"], call["completion_tokens"], cost
            )
            held[call["dialogue_id"]] += cost
        for dialogue_id, total in spent.items():
            if total != held[dialogue_id]:
                row(UNSETTLED).add(dialogue_id, 0, 0, total - held[dialogue_id])
    return sorted(rows.values(), key=lambda r: (-r.spent_usd, r.key))


def _key(by: str, dialogue: Row) -> str:
    if by == "day":
        return str(dialogue["created_at"])[:10]
    if dialogue["guild_id"] is None:
        return "command line"  # dialogues started with `voices run`, not from a server
    return str(dialogue["starter_id"] if by == "member" else dialogue["guild_id"])


def total(rows: Iterable[UsageRow]) -> Decimal:
    """Return the spend of every row together."""
    return sum((r.spent_usd for r in rows), Decimal(0))


HEADER = ("dialogues", "prompt_tokens", "completion_tokens", "spent_usd")


def fields(row: UsageRow) -> tuple[str, int, int, int, str]:
    """Return a row as plain values: money as an exact decimal string, as in the transcripts."""
    return row.key, len(row.dialogues), row.prompt_tokens, row.completion_tokens, plain(row.spent_usd)


#: What a spreadsheet reads as the start of a formula when a cell begins with it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def as_csv(rows: Sequence[UsageRow], by: str) -> str:
    """Return the report as CSV with a header line.

    A key is text someone else wrote (a model's name comes from the provider's reply), and a
    spreadsheet runs a cell that begins like a formula (=HYPERLINK(...) sends data away): such a key
    is written after a quote mark, which shows as the text itself."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((by, *HEADER))
    for row in rows:
        key, *figures = fields(row)
        writer.writerow((f"'{key}" if key.startswith(FORMULA_STARTS) else key, *figures))
    return out.getvalue()


def as_json(rows: Sequence[UsageRow], by: str) -> str:
    """Return the report as JSON: the grouping, the rows and the total."""
    document = {
        "by": by,
        "rows": [dict(zip((by, *HEADER), fields(r), strict=True)) for r in rows],
        "total_usd": plain(total(rows)),
    }
    return json.dumps(document, indent=2) + "\n"
