"""Per-guild limits and access: allowed models, caps per dialogue, per day and on concurrency.

Stored in the database and set by a guild's managers; a NULL column falls back to the deployment's
default, so changing a default changes every guild that never chose its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Literal

from bot.budget import format_usd
from bot.errors import InputError
from bot.models import DialogueSpec
from bot.store import Store
from bot.text import counted

Reasoning = Literal["hide", "spoiler", "file"]
REASONING_MODES: tuple[Reasoning, ...] = ("hide", "spoiler", "file")


@dataclass(frozen=True, slots=True)
class GuildPolicy:
    """What one guild allows. `allowed_models` None means every model in the catalogue."""

    max_rounds: int
    max_budget: Decimal
    daily_cap_guild: Decimal
    daily_cap_member: Decimal
    max_concurrent: int
    reasoning: Reasoning = "hide"
    allowed_models: frozenset[str] | None = None
    #: Members with this role may interject in any dialogue (its starter always may); None: nobody else.
    interject_role: int | None = None
    #: An audience vote at each dialogue's end: whether, what it asks (None: the default), how long.
    polls: bool = True
    poll_question: str | None = None
    poll_hours: int = 24


@dataclass(frozen=True, slots=True)
class GuildLoad:
    """What a guild and a member already have going, for the caps."""

    guild_today: Decimal
    member_today: Decimal
    active: int


def check_start(policy: GuildPolicy, spec: DialogueSpec, usage: GuildLoad) -> None:
    """Raise InputError naming the guild limit a new dialogue would break."""
    limits = spec.limits
    for persona in (*spec.participants, *((spec.referee,) if spec.referee else ())):
        if persona.is_human:
            continue  # a member's own seat costs nothing and is no model to allow
        if policy.allowed_models is not None and persona.model not in policy.allowed_models:
            raise InputError(
                f"{persona.model} is not allowed in this server; `/voices config` lists the models"
            )
    if limits.max_rounds > policy.max_rounds:
        raise InputError(f"this server allows at most {counted(policy.max_rounds, 'round')} per dialogue")
    if limits.budget_usd > policy.max_budget:
        raise InputError(f"this server allows a budget of at most {format_usd(policy.max_budget)}")
    if usage.active >= policy.max_concurrent:
        raise InputError(
            f"this server already has {counted(usage.active, 'dialogue')} going "
            f"(at most {policy.max_concurrent}); stop one or wait"
        )
    guild_left = policy.daily_cap_guild - usage.guild_today
    if limits.budget_usd > guild_left:
        raise InputError(
            f"the server's daily cap leaves {format_usd(max(guild_left, Decimal(0)))} today; lower the budget"
        )
    member_left = policy.daily_cap_member - usage.member_today
    if limits.budget_usd > member_left:
        raise InputError(
            f"your daily cap leaves {format_usd(max(member_left, Decimal(0)))} today; lower the budget"
        )


_COLUMNS = (
    "max_rounds",
    "max_budget",
    "daily_cap_guild",
    "daily_cap_member",
    "max_concurrent",
    "reasoning",
    "allowed_models",
    "interject_role",
    "polls",
    "poll_question",
    "poll_hours",
)
_MONEY = {"max_budget", "daily_cap_guild", "daily_cap_member"}


class GuildStore:
    """Guild settings in the dialogue database, over the deployment's defaults."""

    def __init__(self, store: Store, defaults: GuildPolicy):
        self._store = store
        self.defaults = defaults

    async def policy(self, guild_id: int) -> GuildPolicy:
        """Return the guild's policy: its own settings where set, the defaults elsewhere."""
        rows = await self._store.fetchall("SELECT * FROM guild_settings WHERE guild_id = $1", (guild_id,))
        if not rows:
            return self.defaults
        row, changes = rows[0], {}
        for name in _COLUMNS:
            value = row[name]
            if value is None:
                continue
            if name in _MONEY:
                value = Decimal(value)
            elif name == "allowed_models":
                value = frozenset(json.loads(value))
            elif name == "polls":
                value = bool(value)
            changes[name] = value
        return replace(self.defaults, **changes)

    async def update(self, guild_id: int, **changes: object) -> GuildPolicy:
        """Set some of the guild's settings (None resets one to the default); return the new policy."""
        known = {f.name for f in fields(GuildPolicy)}
        unknown = set(changes) - known
        if unknown:
            raise InputError(f"unknown setting {', '.join(sorted(unknown))}")
        values = {}
        for name, value in changes.items():
            if isinstance(value, bool):
                value = int(value)
            elif isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, frozenset):
                value = json.dumps(sorted(value))
            values[name] = value
        async with self._store.transaction() as conn:
            await conn.execute(
                "INSERT INTO guild_settings (guild_id) VALUES ($1) ON CONFLICT DO NOTHING", (guild_id,)
            )
            for name, value in values.items():
                await conn.execute(
                    f"UPDATE guild_settings SET {name} = $1 WHERE guild_id = $2", (value, guild_id)
                )
        return await self.policy(guild_id)
