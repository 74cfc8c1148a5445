"""The benchmarks run (in their quick mode) and report every figure; no timing is asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmarks_report_every_figure():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for title in (
        "Relay overhead",
        "Concurrency",
        "Store and transcripts",
        "Local models",
        "Prompt caching",
        "Discord calls per turn",
        "Back-pressure",
        "Three dialogues sharing a channel's webhook",
        "CPU per streamed chunk",
        "CPU per call",
        "Failover: one of two workers killed (SIGKILL) amid 20 dialogues on PostgreSQL",
        "Instructions per turn",
    ):
        assert f"## {title}" in out
    assert "| True ($" in out  # the transcript's costs add up to what the server reported, exactly
    caching = out.split("## Prompt caching")[1].split("##")[0]
    assert caching.rstrip().endswith("| True |")  # the saving Voices reports is the one measured
    pressure = out.split("## Back-pressure")[1].split("##")[0]
    assert "| True |" in pressure  # every turn's whole text reached the thread after the 429s
    assert "Traceback" not in result.stderr
    # Titles name the figures the quick run used, not the full run's.
    assert "## Relay overhead (2 rounds, 500 tokens/s)" in out
    assert "## Store and transcripts (100 turns)" in out
    store = out.split("## Store and transcripts")[1].split("##")[0]
    assert "| SQLite (WAL) |" in store and "| PostgreSQL 15 (loopback) |" in store
    assert "## Concurrency (1 round per dialogue" in out
    per_chunk = out.split("## CPU per streamed chunk")[1].split("##")[0]
    assert "| minimal asyncio SSE reader (floor) |" in per_chunk and "| Voices end to end" in per_chunk
    per_call = out.split("## CPU per call")[1].split("##")[0]
    assert "| minimal asyncio client (floor) | 8 |" in per_call and "| aiohttp | 8 |" in per_call
    assert "| Voices end to end: a one-word turn" in per_call and "| 300 at once |" in per_call
    local = out.split("## Local models")[1].split("##")[0]
    assert "| local:smollm2 |" in local and "| local:gemma3 |" in local  # measured, or said missing


def test_the_chunk_benchmark_runs_on_uvloop_and_the_simcord_ones_refuse_it():
    pytest.importorskip("uvloop", reason="the fast extra is not installed")
    command = [sys.executable, "-m", "bench", "--loop", "uvloop", "--quick"]
    result = subprocess.run([*command, "chunks"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "loop: uvloop" in result.stdout and "| Voices end to end" in result.stdout
    refused = subprocess.run([*command, "discord"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "discord run on SimCord, which needs asyncio's loop; leave out --loop uvloop" in refused.stderr


def test_an_unknown_benchmark_is_one_clear_line():
    result = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    names = "relay, scale, store, local, caching, discord, backpressure, sharing, chunks, calls"
    assert f"unknown benchmark nope; choose from {names}" in result.stderr


def test_scale_over_worker_processes_reports_one_and_two_side_by_side():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "scale", "--processes", "2", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("## Dialogues over worker processes on PostgreSQL")[1]
    rows = [line for line in table.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all("| 10 | 20 |" in row for row in rows)  # every dialogue's turns, both ways
    assert "provider's share" in table and "PostgreSQL's share" in table


def test_scale_can_spread_the_starts_and_read_at_the_terminals_pace_and_refuses_what_cannot_be():
    command = [sys.executable, "-m", "bench", "scale", "--quick"]
    spread = subprocess.run(
        [*command, "--spread", "0.2", "--read-pace", "0.05"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert spread.returncode == 0, spread.stderr
    assert "one token per chunk, read every 0.05 s, starts spread over 0.2 s)" in spread.stdout
    assert "| 10 | 20 |" in spread.stdout and "| 50 | 100 |" in spread.stdout  # every dialogue's turns
    refused = subprocess.run([*command, "--spread", "-1"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "--spread takes 0 or more seconds" in refused.stderr
    slow = subprocess.run([*command, "--read-pace", "2"], cwd=ROOT, capture_output=True, text=True)
    assert slow.returncode == 2
    assert "--read-pace takes 0 to 1 seconds" in slow.stderr
