"""The words of `/voices usage`: a spend report put in a few lines, members named by mention."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from bot.budget import format_usd
from bot.text import counted
from bot.usage import UsageRow, total

#: The groupings a server's report shows, each also attached as a CSV file.
PER = ("member", "model", "day")
PERIODS = {"today": 0, "7 days": 7, "30 days": 30}
# A message holds 2,000 characters; the CSV files hold everything.
SHOWN = 5


def usage_since(period: str, now: datetime) -> datetime | None:
    """Return where a period starts: today's midnight (UTC), N days back, or None for all time."""
    if period not in PERIODS:
        return None
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=PERIODS[period])


def usage_text(
    reports: dict[str, list[UsageRow]], scope: str, period: str, cap_server: Decimal, cap_member: Decimal
) -> str:
    """Return the report's summary: the total, the caps, and the top lines of each grouping."""
    rows = reports["member"]
    dialogues = sum(len(r.dialogues) for r in rows)
    lines = [
        f"**Usage of {scope}, {period}:** {format_usd(total(rows))} over {counted(dialogues, 'dialogue')} "
        f"· caps per day: server {format_usd(cap_server)}, member {format_usd(cap_member)}"
    ]
    if not rows:
        return lines[0] + "\nNothing spent in this period."
    for by, found in reports.items():
        shown = [f"{_name(by, r.key)} {format_usd(r.spent_usd)}" for r in found[:SHOWN]]
        more = f" · and {len(found) - SHOWN} more in the file" if len(found) > SHOWN else ""
        lines.append(f"By {by}: " + " · ".join(shown) + more)
    return "\n".join(lines)[:2000]


def _name(by: str, key: str) -> str:
    return f"<@{key}>" if by == "member" and key.isdigit() else f"`{key}`"
