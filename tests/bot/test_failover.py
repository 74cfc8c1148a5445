"""The failover drill on a real PostgreSQL: of two worker processes, one is killed with SIGKILL in
the middle of 20 dialogues, and the other finishes every one of them (bench/failover.py checks
each dialogue's turns and spend; the lease is short here so the takeover comes quickly)."""

from __future__ import annotations

from bench.failover import drill


async def test_killing_one_of_two_workers_loses_no_dialogue_turn_or_cent(postgres):
    report = await drill(await postgres.database(), dialogues=20, rounds=2, words=15, rate=50, lease=1.0)
    assert report["held by the killed worker"] == "10"
    assert report["turns"] == "80"  # every dialogue's, each checked whole, none twice
