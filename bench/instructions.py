"""Instructions per turn: the engine's own work counted by valgrind, which varies by a few parts in a
hundred thousand from run to run where CPU seconds on a shared machine vary by a fifth.

A child process runs a few dialogues against the fake OpenRouter (in a process of its own, not
counted) under `valgrind --tool=cachegrind`; the same run with twice the rounds counts the turns
between, so start-up and set-up drop out. Replies of 50 one-word chunks at 50 tokens/s, read at
the engine's pace, give the cost of a streamed turn; one-word replies the cost of a turn's fixed part
(the call, the store, the next prompt); the difference, per chunk, the cost of streaming; and
one-word turns late in a long dialogue, whatever walks the whole history each turn. Work in
the kernel (reads, writes, waits) is not counted: these figures compare versions of the code, and
`scale` says what a core holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import ROOT, engine, fake_server, run_later, spec

#: Dialogues in a run; their starts are a third of a second apart, so their chunks do not arrive together.
DIALOGUES = 3
#: Seconds between two dialogues' starts.
STAGGER = 0.33
TOKENS_PER_SECOND = 50
#: Rounds before the turns counted for a long dialogue's row (those of rounds LONG + 1 to 2 × LONG).
LONG = 25


async def workload(dialogues: int, rounds: int, words: int) -> None:
    """Run the dialogues whose work is counted."""
    async with fake_server(1 / TOKENS_PER_SECOND, words) as server:
        with tempfile.TemporaryDirectory() as folder:
            async with engine(Path(folder), server.base_url) as app:
                ids = [(await app.runner.create(spec(rounds))).id for _ in range(dialogues)]
                await asyncio.gather(*(run_later(n * STAGGER, app, i) for n, i in enumerate(ids)))


def _count(rounds: int, words: int, loop: str) -> int:
    """Run the workload in a child under cachegrind and return the instructions it took."""
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "bench.instructions",
        "--rounds", str(rounds), "--words", str(words), "--loop", loop,
    ]  # fmt: skip
    # A fixed hash seed: the same dicts and sets, the same probes, the same count.
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"the counted run failed: {done.stderr.strip().splitlines()[-1:]}")
    return int(found.group(1).replace(",", ""))


async def measure(rounds: int, loop: str, quick: bool) -> list[dict[str, str]]:
    """Return the instructions per turn of a streamed turn and of a turn's fixed part, and per chunk."""
    if quick or shutil.which("valgrind") is None:
        # Prove the counted workload runs; counting it takes valgrind and about a minute.
        await workload(1, 1, 5)
        note = "quick mode: the workload ran, uncounted" if quick else "valgrind is not installed"
        return [{"reply": "—", "note": note}]
    rows, per_turn = [], {}
    turns = DIALOGUES * rounds * 2  # two seats: two turns a round
    for words in (50, 1):
        short, long = await asyncio.gather(
            asyncio.to_thread(_count, rounds, words, loop), asyncio.to_thread(_count, 2 * rounds, words, loop)
        )
        per_turn[words] = (long - short) / turns
        reply = f"{words} one-word chunks at {TOKENS_PER_SECOND} tokens/s" if words > 1 else "one word"
        rows.append(
            {
                "reply": reply,
                "turns counted": str(turns),
                "instructions per turn": f"{per_turn[words] / 1e6:.2f} M",
            }
        )
    rows[0]["per streamed chunk"] = f"{(per_turn[50] - per_turn[1]) / 49 / 1e3:.0f} k"
    # What a turn costs late in a long dialogue, where whatever walks the whole history each turn shows.
    short, long = await asyncio.gather(
        asyncio.to_thread(_count, LONG, 1, loop), asyncio.to_thread(_count, 2 * LONG, 1, loop)
    )
    turns = DIALOGUES * LONG * 2
    rows.append(
        {
            "reply": f"one word, turns {2 * LONG + 1}–{4 * LONG} of a dialogue",
            "turns counted": str(turns),
            "instructions per turn": f"{(long - short) / turns / 1e6:.2f} M",
        }
    )
    return rows


def main() -> None:
    """The counted child: run the workload and exit."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--words", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    from bot import eventloop

    eventloop.run(workload(DIALOGUES, args.rounds, args.words), prefer_uvloop=args.loop == "uvloop")


if __name__ == "__main__":
    main()
