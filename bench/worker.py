"""A headless worker for the scale benchmark and the failover drill: it runs, with the real engine
and no Discord, the dialogues a parent left for workers (Store.hand_over), up to `--capacity` at a
time, and takes over those of a worker that died once their leases lapse. `voices worker` is the
same for Discord dialogues.

    python -m bench.worker --database postgresql://… --base-url http://127.0.0.1:PORT/api/v1

It exits once no dialogue is left to run, printing one line of JSON: its CPU seconds and the
dialogues it ran to their end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.harness import engine_on
from bot.app import App, utc_now
from bot.control import nap
from bot.errors import LeaseHeld
from bot.models import Status
from bot.plan import Tuning
from bot.store import WORK
from config import DISCORD_READ_PACE

#: How often the worker looks for dialogues (on PostgreSQL a NOTIFY wakes it sooner).
LOOK_SECONDS = 0.5


async def run_one(app: App, dialogue_id: int) -> bool:
    """Run a dialogue to its end; False if another worker took it first."""
    try:
        async for _ in app.runner.run(dialogue_id):
            pass
    except LeaseHeld:
        return False
    return True


async def work(database: str, base_url: str, capacity: int, lease_seconds: float) -> dict[str, float]:
    finished = 0
    # At the bot's read pace, as `voices worker` reads.
    async with engine_on(database, base_url, Tuning(lease_seconds=lease_seconds), DISCORD_READ_PACE) as app:
        running: dict[int, asyncio.Task[bool]] = {}
        async with app.store.watch(WORK, 0) as woken:
            while True:
                for dialogue_id, task in list(running.items()):
                    if task.done():
                        finished += task.result()
                        del running[dialogue_id]
                free = capacity - len(running)
                if free > 0:
                    for dialogue_id in await app.store.unclaimed(utc_now(), free):
                        if dialogue_id not in running:
                            running[dialogue_id] = asyncio.create_task(run_one(app, dialogue_id))
                if not running and not await app.store.list_dialogues(1, (Status.PENDING, Status.RUNNING)):
                    break
                await nap(LOOK_SECONDS, woken)
    return {"cpu": time.process_time(), "finished": finished}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--database", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--capacity", type=int, default=1000)
    parser.add_argument(
        "--lease", type=float, default=15.0, help="lease seconds (the failover drill's are short)"
    )
    args = parser.parse_args()
    from bot import eventloop

    print(
        json.dumps(eventloop.run(work(args.database, args.base_url, args.capacity, args.lease))), flush=True
    )


if __name__ == "__main__":
    main()
