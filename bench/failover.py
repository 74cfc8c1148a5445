"""The failover drill: two headless workers share dialogues on PostgreSQL, one is killed with
SIGKILL in the middle, and the other carries its dialogues on once their leases lapse.

Checked, not just timed: every dialogue finishes at its round limit, each with exactly its
turns (0 to the last, each a whole scripted reply, none twice), and the spend is every turn's
cost, plus what the dead worker's cut-off calls were charged. Reported: how long after the kill
the survivor held every dialogue the dead one had (the lease's time-out, plus a look).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from bench.harness import ROOT, engine_on, fake_server, ms, spec, worker_command
from bot.models import Status, StopReason
from bot.store import Store, utc_now


async def drill(
    database: str, dialogues: int, rounds: int, words: int, rate: float, lease: float
) -> dict[str, str]:
    """Run the drill and return its figures; raise AssertionError naming what did not hold."""
    async with fake_server(1 / rate, words) as server:
        async with engine_on(database, server.base_url) as app:
            ids = [(await app.runner.create(spec(rounds))).id for _ in range(dialogues)]
            for dialogue_id in ids:
                await app.store.hand_over(dialogue_id)
            half = dialogues // 2
            env = {**os.environ, "PYTHONPATH": str(ROOT)}

            async def spawn(capacity: int) -> asyncio.subprocess.Process:
                return await asyncio.create_subprocess_exec(
                    *worker_command(database, server.base_url, capacity, lease),
                    cwd=ROOT,
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                )

            # The first takes half and is killed; the second takes the rest, and then the dead one's.
            victim = await spawn(half)
            held = await _wait_for(lambda: _held_by(app.store, victim.pid), lambda n: n == half)
            survivor = await spawn(dialogues)
            await _wait_for(lambda: _turns(app.store), lambda n: n >= dialogues)  # all under way
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            killed = time.monotonic()
            taken = await _wait_for(
                lambda: _held_by(app.store, victim.pid, live_only=True), lambda n: n == 0, step=0.02
            )
            assert taken == 0
            takeover = time.monotonic() - killed
            # The survivor may already have run every dialogue by now; then it found them ended.
            await asyncio.wait_for(survivor.wait(), timeout=600)
            assert survivor.returncode == 0, f"the surviving worker exited with {survivor.returncode}"
            report = await _check(app.store, ids, rounds, words)
    return {
        "dialogues": str(dialogues),
        "held by the killed worker": str(held),
        "lease": f"{lease:g} s",
        "taken over after": ms(takeover),
        **report,
    }


async def _wait_for(
    read: Callable[[], Awaitable[int]],
    done: Callable[[int], bool],
    step: float = 0.05,
    timeout: float = 120.0,
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: still {value}")
        await asyncio.sleep(step)


async def _held_by(store: Store, pid: int | None, live_only: bool = False) -> int:
    """Return how many dialogues the worker with this process id holds (live leases only, or any
    lease of its, lapsed or not, on a dialogue that has not ended)."""
    live = "AND l.expires_at > $2 " if live_only else ""
    params: tuple[object, ...] = (f"% pid {pid} #%",) + ((utc_now().isoformat(),) if live_only else ())
    rows = await store.fetchall(
        "SELECT COUNT(*) FROM leases l JOIN dialogues d ON d.id = l.dialogue_id "
        f"WHERE l.owner LIKE $1 {live}AND d.status IN ('pending', 'running')",
        params,
    )
    return int(rows[0][0])


async def _turns(store: Store) -> int:
    return int((await store.fetchall("SELECT COUNT(*) FROM turns"))[0][0])


async def _check(store: Store, ids: list[int], rounds: int, words: int) -> dict[str, str]:
    cut_off = 0
    for dialogue_id in ids:
        dialogue, turns, _ = await store.history(dialogue_id)
        assert dialogue.status is Status.FINISHED and dialogue.stop_reason is StopReason.MAX_ROUNDS, (
            f"dialogue {dialogue_id} ended {dialogue.status} ({dialogue.stop_reason})"
        )
        assert [t.seq for t in turns] == list(range(2 * rounds)), (
            f"dialogue {dialogue_id}: {[t.seq for t in turns]}"
        )
        for turn in turns:
            model = dialogue.participants[turn.seat].model
            scripted = turn.text.startswith(f"{model}: ") and len(turn.text.split()) == words + 1
            assert scripted, f"dialogue {dialogue_id} turn {turn.seq + 1} is not a whole reply: {turn.text!r}"
        billed = sum((t.cost_usd for t in turns), Decimal(0))
        extra = dialogue.totals.spent_usd - billed
        assert extra >= 0 and (extra == 0) == (dialogue.totals.interrupted_calls == 0), (
            f"dialogue {dialogue_id}: spent {dialogue.totals.spent_usd}, its turns cost {billed}"
        )
        cut_off += dialogue.totals.interrupted_calls
    return {"turns": str(2 * rounds * len(ids)), "calls cut off, then charged": str(cut_off)}
