"""What Voices counts for Prometheus: dialogues, turns, tokens, spend, provider retries, Discord
posts and rate limits, the relay gap and how long a token takes to reach Discord.

One registry per process, made at start-up and passed down (never the library's global one, so two
bots in one test process count apart). Money is exported as a float, as Prometheus only has floats;
the exact figures are `voices usage`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.events import Ended, Event, TurnFinished, TurnRestarted, TurnStarted

#: The most model names counted apart. The name is the one the provider says answered, so a
#: provider that made up a new one for every call would grow the registry (and every scrape) with
#: each turn; past this many, further names are counted together as OTHER.
MAX_MODELS = 200
OTHER = "other"

#: Seconds, from a few milliseconds (a relay with nothing to wait for) to a minute (Discord's limits).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The process's counters, and what a dialogue's events add to them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._finished_at: dict[int, float] = {}
        self._models: set[str] = set()
        r = self.registry
        self.running = Gauge("voices_dialogues_running", "Dialogues this process runs now", registry=r)
        self.leases = Gauge("voices_leases_held", "Dialogue leases this process holds", registry=r)
        self.finished = Counter(
            "voices_dialogues_finished", "Dialogues ended, by stop reason", ["reason"], registry=r
        )
        self.turns = Counter("voices_turns", "Turns committed, by model", ["model"], registry=r)
        self.tokens = Counter(
            "voices_tokens", "Tokens of committed turns, by model and kind", ["model", "kind"], registry=r
        )
        self.spend = Counter(
            "voices_spend_usd", "USD spent on committed turns, by model", ["model"], registry=r
        )
        self.provider_errors = Counter(
            "voices_provider_errors", "Calls retried after a provider error, by kind", ["kind"], registry=r
        )
        self.discord_requests = Counter(
            "voices_discord_requests", "Posts and edits sent to Discord, by kind", ["kind"], registry=r
        )
        self.discord_rate_limited = Counter(
            "voices_discord_rate_limited", "Discord answers of 429 (discord.py waits and retries)", registry=r
        )
        self.relay_gap = Histogram(
            "voices_relay_gap_seconds",
            "From a turn's commit to the next speaker's call",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.token_to_discord = Histogram(
            "voices_token_to_discord_seconds",
            "From a streamed piece's arrival to the post or edit that shows it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observe(self, dialogue_id: int, event: Event) -> None:
        """Count what one engine event says."""
        match event:
            case TurnStarted():
                finished = self._finished_at.pop(dialogue_id, None)
                if finished is not None:
                    self.relay_gap.observe(self._clock() - finished)
            case TurnRestarted(kind=kind):
                self.provider_errors.labels(kind).inc()
            case TurnFinished(turn=turn):
                self._finished_at[dialogue_id] = self._clock()
                if turn.is_human:
                    return
                usage, model = turn.usage, self._model(turn.model_used)
                self.turns.labels(model).inc()
                for kind, count in (
                    ("prompt", usage.prompt_tokens),
                    ("completion", usage.completion_tokens),
                    ("reasoning", usage.reasoning_tokens),
                ):
                    self.tokens.labels(model, kind).inc(count)
                self.spend.labels(model).inc(float(turn.cost_usd))
            case Ended(dialogue=dialogue):
                self._finished_at.pop(dialogue_id, None)
                reason = str(dialogue.stop_reason) if dialogue.stop_reason else "paused"
                self.finished.labels(reason).inc()

    def _model(self, name: str) -> str:
        """The label a model's figures go under: its name, unless MAX_MODELS others came first."""
        if name in self._models or len(self._models) < MAX_MODELS:
            self._models.add(name)
            return name
        return OTHER

    def exposition(self) -> bytes:
        """Return every metric in Prometheus' text format."""
        return generate_latest(self.registry)
