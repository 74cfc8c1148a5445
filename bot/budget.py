"""The USD budget as a hard cap: worst-case reservations before a call, settlement after it.

Pure and synchronous. Money is Decimal throughout; a float never touches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from bot.errors import InputError
from bot.models import Pricing, Usage

# Chat templates wrap every message in a few special tokens (role markers, separators). 16 is
# above what the common templates add, so the estimate below stays an upper bound.
TOKENS_PER_MESSAGE = 16

# Costs are kept to a billionth of a dollar; reservations round up so they never fall short.
QUANTUM = Decimal("0.000000001")


def count_bytes(messages: Sequence[dict[str, str]]) -> int:
    """Return the UTF-8 size of the messages' text plus the per-message template allowance."""
    size = sum(len(m["content"].encode()) for m in messages)
    return size + TOKENS_PER_MESSAGE * len(messages)


def estimate_prompt_tokens(messages: Sequence[dict[str, str]], known: tuple[int, int] | None = None) -> int:
    """Return an upper bound on the prompt tokens of these messages.

    Byte-level tokenizers never make more tokens than UTF-8 bytes, so bytes bound the count. When
    `known` gives (prompt_tokens, bound) of this speaker's previous request, whose messages are a
    prefix of these, only the new part is bounded by bytes and the old part is counted exactly.
    """
    bound = count_bytes(messages)
    if known is None:
        return bound
    prior_tokens, prior_bound = known
    return min(bound, prior_tokens + max(0, bound - prior_bound) + TOKENS_PER_MESSAGE)


def worst_case_cost(pricing: Pricing, prompt_tokens: int, max_tokens: int) -> Decimal:
    """Return the most a call can cost: every prompt token and max_tokens of output at the dearest rate."""
    output_price = max(pricing.completion, pricing.internal_reasoning)
    cost = pricing.request + prompt_tokens * pricing.prompt + max_tokens * output_price
    return cost.quantize(QUANTUM, rounding=ROUND_CEILING)


def settle_cost(usage: Usage, pricing: Pricing) -> tuple[Decimal, str]:
    """Return what a call cost and where that figure came from ("reported" or "computed")."""
    if usage.cost_usd is not None:
        return usage.cost_usd, "reported"
    cost = (
        pricing.request + usage.prompt_tokens * pricing.prompt + usage.completion_tokens * pricing.completion
    )
    return cost.quantize(QUANTUM, rounding=ROUND_CEILING), "computed"


def parse_usd(text: str, what: str = "budget") -> Decimal:
    """Return a USD amount a person typed ("0.25" or "$0.25"), or raise InputError saying what is expected."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise InputError(f"{what} must be an amount in USD such as 0.25, not '{text}'")
    return value


def format_usd(amount: Decimal) -> str:
    """Return `$0.0036`-style text; tiny non-zero amounts keep their significant digits."""
    shown = amount.quantize(Decimal("0.0001"))
    if shown == 0 and amount != 0:
        return f"${amount.quantize(QUANTUM).normalize():f}"
    return f"${shown}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money set aside for one call until it is settled."""

    amount: Decimal


class Budget:
    """Track spent and reserved money against a limit; refuse any reservation that could pass it."""

    def __init__(self, limit: Decimal, spent: Decimal = Decimal(0)):
        self.limit = limit
        self.spent = spent
        self.reserved = Decimal(0)

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent - self.reserved

    def reserve(self, amount: Decimal) -> Reservation | None:
        """Set `amount` aside, or return None when it does not fit in what is left."""
        if amount > self.remaining:
            return None
        self.reserved += amount
        return Reservation(amount)

    def settle(self, reservation: Reservation, cost: Decimal) -> None:
        """Release a reservation and charge what the call really cost."""
        self.reserved -= reservation.amount
        self.spent += cost

    def release(self, reservation: Reservation) -> None:
        """Release a reservation whose call was never billed."""
        self.reserved -= reservation.amount
