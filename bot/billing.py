"""What a call is charged: the provider's figure when it is a real bill, else what its usage costs at
the catalogue's prices, else its reservation; never less than a provider billed.

Pure, apart from asking a provider what a cut-off call cost. The runner decides what a bill means
for the dialogue (a bill above its reservation stops it once the budget is spent).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, Decimal

from bot.budget import QUANTUM, format_usd, prompt_cost
from bot.models import MAX_TOKENS, Pricing, Usage
from bot.providers.base import CostLookup, TokenCounter

log = logging.getLogger(__name__)

# No single chat call costs a million dollars; a figure above this is a provider's fault, not a bill.
MAX_BILL = Decimal(1_000_000)

# Where a turn's cost came from, from most to least certain.
SOURCES = ("reported", "computed", "reserved")


def valid_cost(value: Decimal | None) -> Decimal | None:
    """Return a reported cost that can be a bill (finite, ≥ 0, below MAX_BILL), else None."""
    if value is None or not value.is_finite() or value < 0 or value > MAX_BILL:
        return None
    # Finer than the quantum is rounded up: a bill is never recorded below what it was.
    return value.quantize(QUANTUM, rounding=ROUND_CEILING) if value != value.quantize(QUANTUM) else value


def usable(usage: Usage) -> bool:
    """Return whether token counts can be priced: none negative or past MAX_TOKENS, the cached ones
    within the prompt."""
    counts = (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.reasoning_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
    )
    return (
        min(counts) >= 0
        and max(counts) <= MAX_TOKENS
        and usage.cached_tokens + usage.cache_write_tokens <= usage.prompt_tokens
    )


def priced(usage: Usage, pricing: Pricing) -> Decimal:
    """Return what these tokens cost at the catalogue's prices, rounded up to the billing quantum."""
    cost = pricing.request + prompt_cost(usage, pricing) + usage.completion_tokens * pricing.completion
    return cost.quantize(QUANTUM, rounding=ROUND_CEILING)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call is charged, why, and what was wrong with the provider's own figures."""

    usage: Usage
    cost: Decimal
    source: str
    #: Why the provider's figure was not used, in words for the transcript (None: it was fine).
    rejected: str | None = None
    #: The charge passed the call's reservation: the provider billed above the prices Voices knew.
    over: bool = False
    #: How the tokens were counted, when the provider reported none.
    counted: str = ""


def charge(usage: Usage | None, pricing: Pricing, reserved: Decimal) -> Charge:
    """Return what a finished call is charged from the usage its provider reported.

    A usable report is billed as reported (or priced from its tokens); a missing or unusable one is
    charged the reservation, the most the call could have cost, so the cap still holds.
    """
    if usage is None:
        if reserved == 0:
            return Charge(Usage(), Decimal(0), "computed")
        return Charge(Usage(), reserved, "reserved", "the provider reported no usage")
    if not usable(usage):
        why = f"the provider reported impossible token counts ({_counts(usage)})"
        return Charge(Usage(), reserved, "reserved", why)
    reported = valid_cost(usage.cost_usd)
    clean = replace(usage, cost_usd=None)
    if reported is not None:
        return _with_over(Charge(clean, reported, "reported"), reserved)
    computed = priced(clean, pricing)
    rejected = None
    if usage.cost_usd is not None:
        rejected = f"the provider reported a cost of {usage.cost_usd}, which cannot be a bill"
    return _with_over(Charge(clean, computed, "computed", rejected), reserved)


async def charge_lost(provider: object, generation_id: str | None, reserved: Decimal) -> Charge:
    """Return what a call with no usage (cut off, or lost in a crash) is charged: what its provider
    says it billed, where it can say, else the reservation."""
    if generation_id is not None and isinstance(provider, CostLookup):
        figure = await provider.generation_cost(generation_id)
        billed = valid_cost(figure)
        if billed is not None:
            return _with_over(Charge(Usage(), billed, "reported"), reserved)
        if figure is not None:
            why = f"the provider's record gave a cost of {figure}, which cannot be a bill"
            return Charge(Usage(), reserved, "reserved", why)
    return Charge(Usage(), reserved, "reserved")


# What a byte-level estimate assumes when a server can neither report nor count its tokens.
BYTES_PER_TOKEN = 4


async def count_usage(provider: object, messages: Sequence[dict[str, str]], reply: str) -> tuple[Usage, str]:
    """Return the tokens of a call whose provider reported no usage, marked estimated, and how they
    were counted: by the server's own tokenizer where it has one, else from the bytes."""
    prompt = "\n".join(m["content"] for m in messages)
    if isinstance(provider, TokenCounter):
        asked = await provider.count_tokens(prompt)
        answered = await provider.count_tokens(reply) if reply else 0
        if asked is not None and answered is not None:
            return Usage(asked, answered, estimated=True), "by the server's tokenizer"
    bytes_in, bytes_out = len(prompt.encode()), len(reply.encode())
    usage = Usage(
        math.ceil(bytes_in / BYTES_PER_TOKEN), math.ceil(bytes_out / BYTES_PER_TOKEN), estimated=True
    )
    return usage, f"from the text's bytes (about {BYTES_PER_TOKEN} to a token)"


def _with_over(bill: Charge, reserved: Decimal) -> Charge:
    if bill.cost <= reserved:
        return bill
    log.warning("a call was billed %s, above its reservation of %s", bill.cost, reserved)
    return replace(bill, over=True)


def _counts(usage: Usage) -> str:
    return (
        f"prompt={usage.prompt_tokens}, completion={usage.completion_tokens}, "
        f"cached={usage.cached_tokens}, cache_write={usage.cache_write_tokens}"
    )


@dataclass(slots=True)
class Bill:
    """What a turn's calls cost together, the least certain source of that figure, and what was
    wrong with the provider's figures on the way."""

    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    source: str = "reported"
    problems: list[str] = field(default_factory=list)
    #: (billed, reserved) of a call billed above its reservation, if any was.
    over: tuple[Decimal, Decimal] | None = None
    #: How the tokens were counted, when the provider reported none.
    counted: str = ""

    def add(self, bill: Charge, reserved: Decimal) -> None:
        """Add one call's charge to the turn's."""
        self.usage = self.usage + bill.usage
        self.cost += bill.cost
        self.source = max(self.source, bill.source, key=SOURCES.index)
        self.counted = bill.counted or self.counted
        if bill.rejected:
            self.problems.append(f"{bill.rejected}; charged {format_usd(bill.cost)} ({bill.source})")
        if bill.over:
            self.over = (bill.cost, reserved)
            self.problems.append(
                f"billed {format_usd(bill.cost)}, above the {format_usd(reserved)} its worst case came "
                "to at the prices Voices knew; recorded as billed"
            )
