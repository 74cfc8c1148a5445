"""Run the benchmarks and print their figures as Markdown: `python -m bench [NAME…] [--quick]`.

--quick runs each one small, to prove it works (CI does this); the figures in docs/benchmarks.md
come from the full run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import platform
from collections.abc import Awaitable, Callable

from bench import (
    backpressure,
    caching,
    calls,
    chunks,
    discord,
    failover,
    instructions,
    local,
    relay,
    scale,
    store,
)
from bench.harness import postgres
from bot import eventloop
from bot.text import counted as counts_of
from config import DISCORD_READ_PACE, TERMINAL_READ_PACE

Row = dict[str, str]
#: A benchmark's title, and what it measures: each awaitable gives one row of figures, or several.
Bench = Callable[[bool], tuple[str, list[Awaitable[Row] | Awaitable[list[Row]]]]]


def _relay(quick: bool) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    rounds, rate, words = (2, 500, 10) if quick else (20, 50, 50)
    return f"Relay overhead ({rounds} rounds, {rate} tokens/s)", [relay.measure(rounds, rate, words)]


def _scale(
    quick: bool, spread: float = 0.0, read_pace: float = DISCORD_READ_PACE
) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    rounds, rate, words, counts = (1, 500, 10, (10, 50)) if quick else (3, 50, 50, (10, 100, 300, 1000))
    starts = f", starts spread over {spread:g} s" if spread else ", all starting at once"
    return (
        f"Concurrency ({counts_of(rounds, 'round')} per dialogue, {words}-token replies at {rate} tokens/s, "
        f"one token per chunk, read every {read_pace:g} s{starts})",
        [scale.measure(n, rounds, rate, words, spread, read_pace) for n in counts],
    )


def _workers(quick: bool, processes: int) -> tuple[str, list[Awaitable[list[Row]]]]:
    dialogues, rounds, rate, words = (10, 1, 500, 10) if quick else (200, 3, 50, 50)

    async def both() -> list[Row]:
        async with postgres() as server:
            if server is None:
                return [{"worker processes": "—", "note": "no PostgreSQL server programs here"}]
            return [
                await scale.measure_workers(
                    await server.database(), n, dialogues, rounds, rate, words, server.cpu_seconds
                )
                for n in sorted({1, processes})
            ]

    return (
        f"Dialogues over worker processes on PostgreSQL ({dialogues} dialogues, "
        f"{counts_of(rounds, 'round')} each, {words}-token replies at {rate} tokens/s, one token per chunk)",
        [both()],
    )


def _failover(quick: bool) -> tuple[str, list[Awaitable[list[Row]]]]:
    dialogues, rounds, words, rate, lease = (20, 1, 10, 100, 1.0) if quick else (20, 3, 50, 50, 5.0)

    async def drilled() -> list[Row]:
        async with postgres() as server:
            if server is None:
                return [{"dialogues": "—", "note": "no PostgreSQL server programs here"}]
            return [await failover.drill(await server.database(), dialogues, rounds, words, rate, lease)]

    return (
        f"Failover: one of two workers killed (SIGKILL) amid {dialogues} dialogues on PostgreSQL "
        f"({counts_of(rounds, 'round')} each, {words}-token replies at {rate} tokens/s)",
        [drilled()],
    )


def _store(quick: bool) -> tuple[str, list[Awaitable[list[Row]]]]:
    turns = 100 if quick else 1000
    return f"Store and transcripts ({turns:,} turns)", [store.measure_both(turns)]


def _local(quick: bool) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    rounds, runs = (1, 1) if quick else (3, 3)
    return (
        f"Local models ({counts_of(rounds, 'round')} between Ada and Basil, {counts_of(runs, 'run')} each)",
        local.measure_all(rounds=rounds, runs=runs, quick=quick),
    )


def _caching(quick: bool) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    rounds, words = (3, 20) if quick else (20, 150)
    return (
        f"Prompt caching ({rounds} rounds, Anthropic-style cache prices)",
        [caching.measure(rounds=rounds, words=words)],
    )


def _discord(quick: bool) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    seconds = 2 if quick else 30
    return (
        f"Discord calls per turn ({discord.CHARS:,} characters over {seconds} s)",
        [discord.measure(seconds=seconds)],
    )


def _backpressure(quick: bool) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    storm, rounds, words, rate = (2, 2, 10, 100) if quick else (30, 10, 50, 50)
    return (
        f"Back-pressure (Discord answering 429 for {storm} s while a dialogue streams at {rate} tokens/s)",
        [backpressure.storm(storm_seconds=storm, rounds=rounds, words=words, tokens_per_second=rate)],
    )


def _sharing(quick: bool) -> tuple[str, list[Awaitable[dict[str, str]]]]:
    rounds, words, rate = (1, 10, 100) if quick else (3, 50, 50)
    return (
        f"Three dialogues sharing a channel's webhook ({rate} tokens/s each)",
        [backpressure.shared(dialogues=3, rounds=rounds, words=words, tokens_per_second=rate)],
    )


def _chunks(quick: bool) -> tuple[str, list[Awaitable[list[Row]]]]:
    streams, words, rate, runs = (4, 20, 500, 1) if quick else (100, 200, 100, 5)
    return (
        f"CPU per streamed chunk ({streams} streams at once, {words} one-word chunks each, {rate} tokens/s; "
        f"median of {counts_of(runs, 'run')})",
        [chunks.measure(streams=streams, words=words, delay=1 / rate, runs=runs)],
    )


def _calls(quick: bool) -> tuple[str, list[Awaitable[list[Row]]]]:
    clients, each, runs = (2, 4, 1) if quick else (10, 100, 5)
    return (
        f"CPU per call ({clients} clients at once, {each} one-word replies each on a kept connection; "
        f"median of {counts_of(runs, 'run')})",
        [calls.measure(clients=clients, calls=each, runs=runs)],
    )


def _instructions(quick: bool) -> tuple[str, list[Awaitable[list[Row]]]]:
    rounds = 3
    return (
        f"Instructions per turn ({instructions.DIALOGUES} dialogues, {counts_of(rounds, 'round')} "
        f"against {counts_of(2 * rounds, 'round')}, counted by valgrind)",
        [instructions.measure(rounds, _loop_name(), quick)],
    )


def _loop_name() -> str:
    """The running loop, as --loop names it."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


#: Each benchmark's title is made from the figures it runs with, so a quick run is labelled as one.
BENCHES: dict[str, Bench] = {
    "relay": _relay,
    "scale": _scale,
    "store": _store,
    "local": _local,
    "caching": _caching,
    "discord": _discord,
    "backpressure": _backpressure,
    "sharing": _sharing,
    "chunks": _chunks,
    "calls": _calls,
    "failover": _failover,
    "instructions": _instructions,
}


#: Benchmarks that drive the bot through SimCord, which patches asyncio's own loop.
ON_SIMCORD = {"discord", "backpressure"}


def table(rows: list[dict[str, str]]) -> str:
    """Return rows of figures as a Markdown table, one column per figure; a row that lacks a figure
    (a model that is not installed, say) shows a dash there."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(k, "—") for k in header) + " |" for row in rows]
    return "\n".join(lines)


async def run(
    names: list[str],
    quick: bool,
    processes: int | None = None,
    spread: float = 0.0,
    read_pace: float = DISCORD_READ_PACE,
) -> None:
    loop, collector = _loop_name(), "tuned" if gc.get_freeze_count() else "default"
    print(
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}; loop: {loop}; collector: {collector}; mode: {'quick' if quick else 'full'}\n"
    )
    for name in names:
        if name == "scale" and processes:
            title, measurements = _workers(quick, processes)
        elif name == "scale":
            title, measurements = _scale(quick, spread, read_pace)
        else:
            title, measurements = BENCHES[name](quick)
        rows: list[Row] = []
        for measurement in measurements:
            result = await measurement
            rows += result if isinstance(result, list) else [result]
        print(f"## {title}\n\n{table(rows)}\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"which to run ({', '.join(BENCHES)}); default all"
    )
    parser.add_argument("--quick", action="store_true", help="small runs that prove the benchmarks work")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop to measure on; `voices` runs on uvloop where the fast extra is installed",
    )
    parser.add_argument(
        "--collector",
        choices=("tuned", "default"),
        default="tuned",
        help="the garbage collector as `voices` sets it, or as CPython does (to measure the difference)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="scale: run its dialogues on 1 and on N headless worker processes sharing PostgreSQL",
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="scale: start the dialogues spread evenly over this many seconds instead of all at once",
    )
    parser.add_argument(
        "--read-pace",
        type=float,
        default=DISCORD_READ_PACE,
        metavar="SECONDS",
        help=f"scale: seconds between reads of a streamed reply (default {DISCORD_READ_PACE:g}, the bot's; "
        f"the terminal's is {TERMINAL_READ_PACE:g})",
    )
    args = parser.parse_args()
    if not 0 <= args.read_pace <= 1:
        parser.error("--read-pace takes 0 to 1 seconds")
    if args.processes is not None and args.processes < 1:
        parser.error("--processes takes 1 or more")
    if args.spread < 0:
        parser.error("--spread takes 0 or more seconds")
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    names = args.names or [name for name in BENCHES if args.loop == "asyncio" or name not in ON_SIMCORD]
    if args.loop == "uvloop":
        if refused := sorted(set(names) & ON_SIMCORD):
            parser.error(
                f"{', '.join(refused)} run on SimCord, which needs asyncio's loop; leave out --loop uvloop"
            )
        if importlib.util.find_spec("uvloop") is None:
            parser.error("uvloop is not installed; pip install -e '.[fast]'")
    work = run(names, args.quick, args.processes, args.spread, args.read_pace)
    eventloop.run(work, prefer_uvloop=args.loop == "uvloop", tune=args.collector == "tuned")


if __name__ == "__main__":
    main()
