"""The USD budget as a hard cap: worst-case reservations before a call, settlement after it.

Pure and synchronous. Money is Decimal throughout; a float never touches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal, InvalidOperation

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


def estimate_prompt_tokens(bound: int, known: tuple[int, int] | None = None) -> int:
    """Return an upper bound on the prompt tokens of messages whose `count_bytes` is `bound`.

    Byte-level tokenizers never make more tokens than UTF-8 bytes, so bytes bound the count. When
    `known` gives (prompt_tokens, bound) of this speaker's previous request, whose messages are a
    prefix of these, only the new part is bounded by bytes and the old part is counted exactly.
    """
    if known is None:
        return bound
    prior_tokens, prior_bound = known
    return min(bound, prior_tokens + max(0, bound - prior_bound) + TOKENS_PER_MESSAGE)


# Tokenizers differ between models; an expectation drawn from one model's counts gets this margin.
EXPECTATION_MARGIN = 1.15


def expected_tokens(bound: int, tokens_per_byte: float) -> int:
    """Return the prompt tokens messages whose `count_bytes` is `bound` are expected to make, from
    the dialogue's observed rate.

    For deciding what fits a context, not for money: the byte bound of `estimate_prompt_tokens` is
    what reservations use, since only it is a true upper bound.
    """
    return min(bound, math.ceil(bound * tokens_per_byte * EXPECTATION_MARGIN) + TOKENS_PER_MESSAGE)


def worst_case_cost(pricing: Pricing, prompt_tokens: int, max_tokens: int) -> Decimal:
    """Return the most a call can cost: every prompt token and max_tokens of output at the dearest rate.

    A cache write costs more than a plain prompt token (1.25× at Anthropic), so whatever the cache
    does with the prompt, it is bounded at the dearest of the prompt prices.
    """
    prompt_price = max(pricing.prompt, pricing.cache_write or 0, pricing.cache_read or 0)
    output_price = max(pricing.completion, pricing.internal_reasoning)
    cost = pricing.request + prompt_tokens * prompt_price + max_tokens * output_price
    return cost.quantize(QUANTUM, rounding=ROUND_CEILING)


def cache_saving(usage: Usage, pricing: Pricing) -> Decimal:
    """Return what the prompt cache saved on a call: its prompt at the plain price minus what it cost.

    Negative when the call only wrote to the cache (a write costs more than a plain token); the
    reads of later calls pay it back.
    """
    saving = (usage.prompt_tokens * pricing.prompt - prompt_cost(usage, pricing)).quantize(QUANTUM)
    return saving if saving else Decimal(0)


def prompt_cost(usage: Usage, pricing: Pricing) -> Decimal:
    """Return what a call's prompt cost: plain tokens, cache reads and cache writes at their prices."""
    plain = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    read = pricing.cache_read if pricing.cache_read is not None else pricing.prompt
    write = pricing.cache_write if pricing.cache_write is not None else pricing.prompt
    return plain * pricing.prompt + usage.cached_tokens * read + usage.cache_write_tokens * write


# No amount a person types (a budget, a cap) needs to be larger; beyond it, figures stop being money.
MAX_AMOUNT = Decimal(1_000_000)


def parse_usd(text: str, what: str = "budget") -> Decimal:
    """Return a USD amount a person typed ("0.25" or "$0.25"), or raise InputError saying what is expected."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise InputError(f"{what} must be an amount in USD such as 0.25, not '{text}'")
    if abs(value) > MAX_AMOUNT:
        raise InputError(f"{what} must be at most ${MAX_AMOUNT}, not '{text}'")
    # Money is kept to a billionth; a finer amount would be shown and compared as something else.
    if value != value.quantize(QUANTUM, context=Context(prec=60)):
        raise InputError(f"{what} is kept to a billionth of a dollar (9 decimal places), not '{text}'")
    return value + 0  # -0 becomes 0, so no message ever shows "$-0"


def format_usd(amount: Decimal) -> str:
    """Return `$0.0036`-style text; tiny non-zero amounts keep their significant digits."""
    if not amount.is_finite():
        return f"${amount}"  # only a figure that was refused is shown so; none is ever stored
    # A wide context: an amount such as $1e30 must print, not overflow the default 28 digits.
    wide = Context(prec=60)
    shown = amount.quantize(Decimal("0.0001"), context=wide)
    if shown == 0 and amount != 0:
        return f"${amount.quantize(QUANTUM, context=wide).normalize(wide):f}"
    return f"${shown:f}"


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
