"""When to try a failed model call again: bounded attempts, exponential backoff with jitter, Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

from bot.errors import ProviderError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `attempts` tries; waits base·2ⁿ plus jitter, capped, unless the server says otherwise."""

    attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.5

    def delay(self, error: ProviderError, attempt: int, rng: random.Random | None = None) -> float | None:
        """Return seconds to wait before try `attempt + 1`, or None when the error is final."""
        if not error.retryable or attempt >= self.attempts:
            return None
        if error.retry_after is not None:
            # The server knows its own limits; waiting less only earns another 429.
            return min(error.retry_after, self.max_delay * 4)
        backoff = min(self.base_delay * 2.0 ** (attempt - 1), self.max_delay)
        uniform = rng.uniform if rng is not None else random.uniform
        return backoff + uniform(0, self.jitter * backoff)
