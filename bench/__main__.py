"""Run the benchmarks and print their figures as Markdown: `python -m bench [NAME…] [--quick]`.

--quick runs each one small, to prove it works (CI does this); the figures in docs/benchmarks.md
come from the full run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from collections.abc import Awaitable, Callable

from bench import backpressure, caching, discord, local, relay, scale, store

Bench = Callable[[bool], list[Awaitable[dict[str, str]]]]

BENCHES: dict[str, tuple[str, Bench]] = {
    "relay": (
        "Relay overhead (20 rounds, 50 tokens/s)",
        lambda quick: [
            relay.measure(
                rounds=2 if quick else 20, tokens_per_second=500 if quick else 50, words=10 if quick else 50
            )
        ],
    ),
    "scale": (
        "Concurrency (3 rounds per dialogue, 50 tokens/s)",
        lambda quick: [
            scale.measure(
                n, rounds=1 if quick else 3, tokens_per_second=500 if quick else 50, words=10 if quick else 50
            )
            for n in ((10, 50) if quick else (10, 50, 100, 1000))
        ],
    ),
    "store": ("Store and transcripts", lambda quick: [store.measure(100 if quick else 1000)]),
    "local": (
        "Local model (llama.cpp, Gemma 3 270M Q4_K_M)",
        lambda quick: [local.measure(rounds=1 if quick else 5, max_tokens=16 if quick else 96)],
    ),
    "caching": (
        "Prompt caching (20 rounds, Anthropic-style cache prices)",
        lambda quick: [caching.measure(rounds=3 if quick else 20, words=20 if quick else 150)],
    ),
    "discord": (
        "Discord calls per turn (1,500 characters)",
        lambda quick: [discord.measure(seconds=2 if quick else 30)],
    ),
    "backpressure": (
        "Back-pressure (Discord answering 429 while a dialogue streams at 50 tokens/s)",
        lambda quick: [
            backpressure.storm(
                storm_seconds=2 if quick else 30,
                rounds=2 if quick else 10,
                words=10 if quick else 50,
                tokens_per_second=100 if quick else 50,
            )
        ],
    ),
    "sharing": (
        "Three dialogues sharing a channel's webhook (50 tokens/s each)",
        lambda quick: [
            backpressure.shared(
                dialogues=3,
                rounds=1 if quick else 3,
                words=10 if quick else 50,
                tokens_per_second=100 if quick else 50,
            )
        ],
    ),
}


def table(rows: list[dict[str, str]]) -> str:
    """Return rows of figures as a Markdown table, one column per figure."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[k] for k in header) + " |" for row in rows]
    return "\n".join(lines)


async def run(names: list[str], quick: bool) -> None:
    print(
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}; mode: {'quick' if quick else 'full'}\n"
    )
    for name in names:
        title, bench = BENCHES[name]
        rows = [await measurement for measurement in bench(quick)]
        print(f"## {title}\n\n{table(rows)}\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"which to run ({', '.join(BENCHES)}); default all"
    )
    parser.add_argument("--quick", action="store_true", help="small runs that prove the benchmarks work")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    asyncio.run(run(args.names or list(BENCHES), args.quick))


if __name__ == "__main__":
    main()
