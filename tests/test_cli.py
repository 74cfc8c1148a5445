"""The `voices` command as a user runs it: a real process against the loopback OpenRouter."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import stat
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import trustme

from bot.migrations import SCHEMA_VERSION
from bot.providers.local import local_available
from config import DISCORD_READ_PACE, Settings
from tests.bot.providers.test_tls import https_server
from tests.conftest import API_KEY, GLM, OPUS
from tests.fake_openrouter import FakeOpenRouter, Reply, plain

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def env(tmp_path, server):
    values = {k: v for k, v in os.environ.items() if not k.startswith(("VOICES_", "OPENROUTER_"))}
    values.update(
        {
            "OPENROUTER_API_KEY": API_KEY,
            "VOICES_OPENROUTER_BASE_URL": server.base_url,
            "VOICES_DATABASE": str(tmp_path / "voices.db"),
            "VOICES_TRANSCRIPTS_DIR": str(tmp_path / "transcripts"),
            "VOICES_LOG_LEVEL": "DEBUG",
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "100",
        }
    )
    return values


async def start(
    env: dict[str, str], cwd: Path, *args: str, typing: bool = False
) -> asyncio.subprocess.Process:
    """Start `voices`; with `typing`, its standard input is a pipe the test writes to."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if typing else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def voices(env: dict[str, str], cwd: Path, *args: str, typed: str | None = None) -> Result:
    """Run `voices` to its end; `typed` is what a person types at it."""
    process = await start(env, cwd, *args, typing=typed is not None)
    out, err = await asyncio.wait_for(
        process.communicate(typed.encode() if typed is not None else None), timeout=60
    )
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


RUN = (
    "run",
    "--a",
    OPUS,
    "--b",
    GLM,
    "--max-tokens",
    "300",
    "--rounds",
    "2",
    "--budget",
    "0.05",
    "--opening",
    "Hello there.",
)


def db_rows(env: dict[str, str], query: str) -> list[tuple]:
    with sqlite3.connect(env["VOICES_DATABASE"]) as conn:
        return conn.execute(query).fetchall()


async def test_run_streams_the_dialogue_and_writes_both_transcripts(env, tmp_path, server):
    result = await voices(env, tmp_path, *RUN, "--system-a", "You are Claude.")
    assert result.code == 0, result.err
    assert "Round 1 · claude-opus-4.6" in result.out and "Round 2 · glm-5" in result.out
    assert "Reply 4 from z-ai/glm-5" in result.out
    assert "Ended: all rounds completed" in result.out
    md, js = tmp_path / "transcripts" / "1.md", tmp_path / "transcripts" / "1.json"
    assert f"Transcripts: {md}  {js}" in result.out
    assert md.read_text().startswith("# Voices Chat: claude-opus-4.6 <-> glm-5")
    document = json.loads(js.read_text())
    assert Decimal(document["totals"]["spent_usd"]) == sum(server.reported_costs)
    assert plain(server.chat_requests[0].body["messages"])[0] == {
        "role": "system",
        "content": "You are Claude.",
    }
    # DEBUG logging is on, yet the key shows up nowhere a user could see.
    for text in (result.out, result.err, md.read_text(), js.read_text()):
        assert API_KEY not in text


async def test_list_show_export_and_models(env, tmp_path):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    listing = await voices(env, tmp_path, "list")
    assert "claude-opus-4.6 ↔ glm-5" in listing.out and "max_rounds" in listing.out
    shown = await voices(env, tmp_path, "show", "1")
    assert shown.code == 0 and "## Round 2" in shown.out
    out = tmp_path / "copy.json"
    exported = await voices(env, tmp_path, "export", "1", "--format", "json", "--out", str(out))
    assert exported.code == 0 and json.loads(out.read_text())["dialogue"]["id"] == 1
    to_stdout = await voices(env, tmp_path, "export", "1", "--format", "md")
    assert to_stdout.out == (tmp_path / "transcripts" / "1.md").read_text()
    models = await voices(env, tmp_path, "models", "glm")
    assert "z-ai/glm-5" in models.out and "claude" not in models.out and "\n1 model\n" in models.out
    assert "cached" in models.out and "0.16" in models.out  # GLM's cached prompt price
    every = await voices(env, tmp_path, "models")  # 80 columns, as a pipe gets: ids people copy, whole
    assert max(len(line) for line in every.out.splitlines()) <= 80
    assert "anthropic/claude-opus-4.6" in every.out
    if local_available():
        assert "local:default" in (await voices(env, tmp_path, "models", "local")).out


async def test_export_writes_through_a_link_and_into_a_pipe_without_replacing_either(env, tmp_path):
    """The file is written beside itself and renamed into place, so a reader never sees half of it;
    renamed onto a link or a pipe (or /dev/stdout, a device), that would put a file in its place."""
    assert (await voices(env, tmp_path, *RUN)).code == 0
    expected = (tmp_path / "transcripts" / "1.md").read_text()
    real, link = tmp_path / "kept" / "real.md", tmp_path / "link.md"
    real.parent.mkdir()
    real.write_text("old")
    link.symlink_to(real)
    assert (await voices(env, tmp_path, "export", "1", "--out", str(link))).code == 0
    assert link.is_symlink() and real.read_text() == expected
    pipe = tmp_path / "pipe.md"
    os.mkfifo(pipe)
    read = asyncio.create_task(asyncio.to_thread(pipe.read_text))
    try:
        assert (await voices(env, tmp_path, "export", "1", "--out", str(pipe))).code == 0
        assert await asyncio.wait_for(read, 10) == expected
        assert stat.S_ISFIFO(pipe.stat().st_mode)
    finally:
        if not read.done():  # let the reader's thread end, whatever went wrong
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    assert not [p for p in tmp_path.rglob(".*.partial")]  # nothing left beside them


async def test_run_with_a_referee_prints_and_keeps_its_verdict(env, tmp_path, server):
    server.enqueue_for(GLM, Reply("Interim: level so far."), Reply("Claude made the stronger case."))
    result = await voices(env, tmp_path, *RUN, "--b", OPUS, "--referee", GLM, "--referee-every", "1")
    assert result.code == 0, result.err
    assert result.out.count("⚖ glm-5's verdict (z-ai/glm-5, cost $") == 2
    assert "Claude made the stronger case." in result.out
    # Printed after the last turn, before the end line.
    assert result.out.index("Claude made the stronger case.") < result.out.index("Ended: all rounds")
    document = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    assert [n["text"] for n in document["notes"] if n["kind"] == "verdict"] == [
        "Interim: level so far.",
        "Claude made the stronger case.",
    ]
    assert Decimal(document["totals"]["spent_usd"]) == sum(server.reported_costs)
    assert document["referee"] == {
        "name": "glm-5",
        "model": GLM,
        "system_prompt": "",
        "max_tokens": 300,
        "every_rounds": 1,
    }


async def test_export_png_writes_the_picture_to_a_file_or_a_pipe(env, tmp_path):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    out = tmp_path / "pictures" / "1.png"
    written = await voices(env, tmp_path, "export", "1", "--format", "png", "--out", str(out))
    assert written.code == 0 and f"wrote {out}" in written.out
    piped = await start(env, tmp_path, "export", "1", "--format", "png")
    data, _ = await piped.communicate()
    assert data == out.read_bytes() and data.startswith(b"\x89PNG\r\n\x1a\n")
    missing = await voices(env, tmp_path, "export", "9", "--format", "png", "--out", str(tmp_path / "9.png"))
    assert missing.code == 2 and "no dialogue 9" in missing.err and not (tmp_path / "9.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--referee-every", "1"), "a verdict every few rounds needs a referee; give one (--referee)"),
        (("--referee", "nobody"), "'nobody' is neither a persona"),
        (("--referee", "human"), "the referee must be a persona or a model"),
        (("--referee", OPUS, "--budget", "0.008"), "budget $0.008 cannot pay for the first call (up to $"),
        (("--rounds", "0"), "argument --rounds: must be a whole number of at least 1, not '0'"),
        (("--rounds", "51"), "rounds must be between 1 and 50"),
        (("--budget", "0"), "budget must be above $0"),
        (
            ("--budget", "9"),
            "budget must be above $0 and at most $5.00 (VOICES_MAX_BUDGET), not $9",
        ),
        (
            ("--opening", " "),
            "the opening message is empty; give the first speaker something to answer",
        ),
        (("--b", "z-ai/glm5"), "unknown model 'z-ai/glm5'; did you mean z-ai/glm-5?"),
        (("--b", "nobody"), "'nobody' is neither a persona"),
    ],
)
async def test_bad_input_is_one_line_before_any_money_is_spent(env, tmp_path, server, args, message):
    result = await voices(env, tmp_path, *RUN, *args)
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == result.err.strip().splitlines()[0]
    assert f"error: {message}" in result.err
    assert server.chat_requests == []
    assert not (tmp_path / "transcripts").exists()


async def test_missing_key_names_the_variable(env, tmp_path, server):
    env["OPENROUTER_API_KEY"] = ""
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 2
    assert result.err.strip() == (
        "error: OPENROUTER_API_KEY is not set; put it in .env or the "
        "environment (or add --dry-run to try Voices without one)"
    )
    assert server.requests == []


async def test_unreachable_base_url_is_one_clear_line(env, tmp_path):
    env["VOICES_OPENROUTER_BASE_URL"] = "http://127.0.0.1:9/api/v1"
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 1
    assert result.err.strip().startswith("error: cannot reach http://127.0.0.1:9/api/v1")
    assert len(result.err.strip().splitlines()) == 1


async def test_run_over_https_trusts_the_authority_ssl_cert_file_names(env, tmp_path):
    """As behind a company's TLS-inspecting proxy: its authority, named in SSL_CERT_FILE, is trusted;
    without it the run stops in one line before any request, saying what to set."""
    authority = trustme.CA()
    bundle = tmp_path / "company-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    async with https_server(authority.issue_cert("localhost")) as server:
        env["VOICES_OPENROUTER_BASE_URL"] = server.base_url
        env.pop("SSL_CERT_DIR", None)
        env.pop("SSL_CERT_FILE", None)
        refused = await voices(env, tmp_path, *RUN)
        env["SSL_CERT_FILE"] = str(bundle)
        result = await voices(env, tmp_path, *RUN)
    assert refused.code == 1
    assert refused.err.strip().startswith(f"error: the certificate of {env['VOICES_OPENROUTER_BASE_URL']}")
    assert refused.err.strip().endswith("name its file in SSL_CERT_FILE")
    assert len(refused.err.strip().splitlines()) == 1
    assert result.code == 0, result.err
    assert "Ended: all rounds completed" in result.out
    assert sorted(p.name for p in (tmp_path / "transcripts").iterdir()) == ["1.json", "1.md"]
    assert len(server.chat_requests) == 4  # the refused run sent none


async def test_bad_setting_is_one_clear_line(env, tmp_path):
    env["VOICES_MAX_ROUNDS"] = "many"
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 2
    assert result.err.strip().startswith("error: VOICES_MAX_ROUNDS: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a database" * 200, "unreadable"), (None, "newer than this Voices knows")],
)
async def test_unusable_database_is_refused_and_left_alone(env, tmp_path, content, message):
    path = Path(env["VOICES_DATABASE"])
    if content is None:
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA user_version = 99")
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 2 and message in result.err
    assert path.read_bytes() == before


async def test_provider_error_exits_non_zero_with_the_reason_recorded(env, tmp_path, server):
    server.enqueue(Reply(status=402, error={"error": {"code": 402, "message": "Insufficient credits"}}))
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 1
    assert "out of credits (402: Insufficient credits)" in result.out
    assert db_rows(env, "SELECT status, stop_reason FROM dialogues") == [("failed", "provider_error")]
    assert (tmp_path / "transcripts" / "1.md").exists()


async def test_dry_run_needs_no_key_and_no_network(env, tmp_path, server):
    env["OPENROUTER_API_KEY"] = ""
    result = await voices(env, tmp_path, *RUN, "--dry-run")
    assert result.code == 0, result.err
    assert "Dry-run reply" in result.out and "Ended: all rounds completed" in result.out
    assert server.requests == []


async def test_a_dry_run_of_a_long_pasted_opening_runs_to_its_end(env, tmp_path):
    """A 100,000-character opening with no spaces (a pasted blob): the stand-in quoted its last
    word whole, past any reply cap, and the dry run ended as a provider error."""
    blob = "x" * 100_000
    result = await voices(env, tmp_path, "run", "--dry-run", "--rounds", "2", "--opening", blob)
    assert result.code == 0, result.err
    assert "Ended: all rounds completed" in result.out and "…xxxx" in result.out


async def test_ctrl_c_stops_cleanly_and_still_writes_the_transcript(env, tmp_path):
    async with FakeOpenRouter(default_delay=0.1) as slow:
        env["VOICES_OPENROUTER_BASE_URL"] = slow.base_url
        process = await start(env, tmp_path, *RUN[:-4], "--rounds", "5", "--opening", "Hi")
        while len(slow.chat_requests) < 2:
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    assert "Ended: stopped by the user" in out.decode()
    assert db_rows(env, "SELECT status, stop_reason FROM dialogues") == [("stopped", "user_stop")]
    statuses = [row[0] for row in db_rows(env, "SELECT status FROM turns ORDER BY seq")]
    assert statuses == ["ok", "cancelled"]
    assert "stopped by the user" in (tmp_path / "transcripts" / "1.md").read_text()


async def ask_from_another_terminal(env, tmp_path, *command: str) -> tuple[Result, Result]:
    """Run a slow five-round dialogue with `voices run`; during its second reply, run `voices
    *command` as a second process. Return what each printed."""
    async with FakeOpenRouter(default_delay=0.1) as slow:
        env["VOICES_OPENROUTER_BASE_URL"] = slow.base_url
        process = await start(env, tmp_path, *RUN[:-4], "--rounds", "5", "--opening", "Hi")
        while len(slow.chat_requests) < 2:
            await asyncio.sleep(0.02)
        asked = await voices(env, tmp_path, *command)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return asked, Result(process.returncode, out.decode(), err.decode())


async def test_voices_stop_from_another_terminal_stops_the_run_after_its_turn(env, tmp_path):
    asked, run = await ask_from_another_terminal(env, tmp_path, "stop", "1")
    assert asked.code == 0, asked.err
    assert asked.out.strip() == (
        "Asked the process running dialogue 1 to stop after the turn in flight; "
        "it takes the ask within a second."
    )
    assert run.code == 0, run.err
    assert "Ended: stopped by the user" in run.out
    assert db_rows(env, "SELECT status, stop_reason, stop_detail FROM dialogues") == [
        ("stopped", "user_stop", "stopped from another process")
    ]
    statuses = [row[0] for row in db_rows(env, "SELECT status FROM turns ORDER BY seq")]
    assert statuses and set(statuses) == {"ok"} and len(statuses) < 10  # whole turns, then it stopped


async def test_voices_pause_from_another_terminal_then_stop_ends_the_paused_dialogue(env, tmp_path):
    asked, run = await ask_from_another_terminal(env, tmp_path, "pause", "1")
    assert asked.code == 0 and "to pause after the turn in flight" in asked.out
    assert run.code == 0, run.err
    assert db_rows(env, "SELECT status FROM dialogues") == [("paused",)]
    again = await voices(env, tmp_path, "pause", "1")
    assert again.code == 2
    assert again.err.strip() == "error: dialogue 1 is not running (paused); nothing to pause"
    # Stopping plans no call: it needs no server, nor its catalogue (here, one never fetched from
    # a server that does not answer, as in an outage after the stored copy went stale).
    offline = {**env, "VOICES_OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"}
    stopped = await voices(offline, tmp_path, "stop", "1")
    assert stopped.code == 0, stopped.err
    assert stopped.out.startswith("Stopped dialogue 1 (no process was running it). Transcripts: ")
    assert db_rows(env, "SELECT status, stop_reason FROM dialogues") == [("stopped", "user_stop")]
    assert "stopped by the user" in (tmp_path / "transcripts" / "1.md").read_text()
    ended = await voices(env, tmp_path, "stop", "1")
    assert ended.code == 2
    assert ended.err.strip() == "error: dialogue 1 has ended (stopped by the user); there is nothing to stop"
    unknown = await voices(env, tmp_path, "stop", "7")
    assert unknown.code == 2 and unknown.err.strip() == "error: no dialogue 7; `voices list` shows the ids"


async def test_killed_mid_dialogue_then_resumed_loses_and_repeats_no_turn(env, tmp_path):
    """kill -9 during round 2; the dead process's lease holds off a resume until it lapses, then
    `voices resume` takes the dialogue over and finishes it with every turn exactly once."""
    async with FakeOpenRouter(default_delay=0.1) as slow:
        env["VOICES_OPENROUTER_BASE_URL"] = slow.base_url
        # Long enough for `voices resume` to start and be refused on a busy machine (a lease is
        # renewed every third of it, so at least two thirds of it are left after the kill).
        env["VOICES_LEASE_SECONDS"] = "6"
        process = await start(env, tmp_path, *RUN[:-4], "--rounds", "3", "--opening", "Hi")
        while len(slow.chat_requests) < 3:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)  # the third reply is streaming now
        process.kill()
        await process.wait()
        assert db_rows(env, "SELECT seq FROM turns ORDER BY seq") == [(0,), (1,)]
        assert db_rows(env, "SELECT status FROM dialogues") == [("running",)]
        ((reserved, generation),) = db_rows(env, "SELECT reserved_usd, generation_id FROM calls_in_flight")
        assert generation is not None  # kept as soon as the call was accepted

        early = await voices(env, tmp_path, "resume", "1")
        assert early.code == 2 and early.err.count("\n") == 1, early.err
        assert "dialogue 1 is being run by another process" in early.err and "lapses in" in early.err
        # Refused before touching anything: the dead call is still in flight, to be settled once.
        assert len(db_rows(env, "SELECT seq FROM calls_in_flight")) == 1
        ((expires,),) = db_rows(env, "SELECT expires_at FROM leases")
        await asyncio.sleep((datetime.fromisoformat(expires) - datetime.now(UTC)).total_seconds() + 0.1)
        result = await voices(env, tmp_path, "resume", "1")
        billed = slow.generations[generation]["total_cost"]
    assert result.code == 0, result.err
    turns = db_rows(env, "SELECT seq, round, seat, status FROM turns ORDER BY seq")
    assert turns == [(s, s // 2 + 1, s % 2, "ok") for s in range(6)]
    spent, interrupted = db_rows(env, "SELECT spent_usd, interrupted_calls FROM dialogues")[0]
    turn_costs = sum(Decimal(c) for (c,) in db_rows(env, "SELECT cost_usd FROM turns"))
    assert interrupted == 1
    # The lost call is charged what the server billed for it, which is less than its worst case.
    assert Decimal(spent) == turn_costs + billed and 0 < billed < Decimal(reserved)
    transcript = (tmp_path / "transcripts" / "1.md").read_text()
    assert transcript.count("## Round") == 3
    assert "Interrupted calls:** 1" in transcript


async def test_resume_of_a_finished_dialogue_is_refused(env, tmp_path):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    result = await voices(env, tmp_path, "resume", "1")
    assert result.code == 2
    assert "dialogue 1 has ended (all rounds completed); start a new one" in result.err


async def test_unknown_dialogue_id_is_one_line(env, tmp_path):
    result = await voices(env, tmp_path, "show", "42")
    assert result.code == 2 and result.err.strip() == "error: no dialogue 42; `voices list` shows the ids"


@pytest.mark.parametrize("command", [("bot",), ("bot", "--gateway-only"), ("worker",)])
async def test_bot_without_a_token_is_one_line(env, tmp_path, command):
    env["DISCORD_TOKEN"] = ""
    result = await voices(env, tmp_path, *command)
    assert result.code == 2
    assert (
        result.err.strip()
        == "error: DISCORD_TOKEN is not set; put the bot's token in .env or the environment"
    )


@pytest.mark.parametrize(
    ("args", "environment", "message"),
    [
        (
            ["--shards", "0-3"],
            {},
            "--shards: needs the shard count as well (VOICES_SHARD_COUNT, or --shard-count)",
        ),
        (
            ["--shards", "0-9", "--shard-count", "8"],
            {},
            "--shards: shard 8 is not below the shard count 8; shards are 0 to 7",
        ),
        (
            ["--shards", "3-1", "--shard-count", "8"],
            {},
            "--shards: the range 3-1 runs backwards; write it as 1-3",
        ),
        (
            ["--shards", "0-999999999", "--shard-count", "8"],
            {},
            "--shards: shard 999999999 is past the 100,000 shards Voices takes",
        ),
        (
            [],
            {"VOICES_SHARDS": "0,x", "VOICES_SHARD_COUNT": "2"},
            "VOICES_SHARDS: 'x' is not a shard or a range of them; write them as 0-3 or 0,2,5; "
            "fix it in .env or the environment",
        ),
    ],
)
async def test_a_gateway_split_that_cannot_be_is_one_line_before_discord_is_reached(
    env, tmp_path, args, environment, message
):
    env.update(environment)
    result = await voices(env, tmp_path, "bot", *args)
    assert result.code == 2
    assert result.err.strip() == f"error: {message}"


@pytest.mark.parametrize("command", ["bot", "worker"])
async def test_bot_with_a_rejected_token_is_one_line(env, tmp_path, server, command):
    """Discord answers the login with 401: one line, no traceback (Discord's API is on loopback)."""
    server.routes[("GET", "/api/v10/users/@me")] = (401, {"message": "401: Unauthorized", "code": 0})
    process = await on_loopback_discord(env, tmp_path, server, command, token="MTIz.rejected.token")
    _, raw = await asyncio.wait_for(process.communicate(), timeout=60)
    err = raw.decode()
    assert process.returncode == 2
    assert err.strip().splitlines()[-1] == (
        "error: Discord rejected DISCORD_TOKEN; reset the token in the Developer Portal and set it again"
    )
    assert "MTIz.rejected.token" not in err and "Traceback" not in err


@pytest.mark.local
@pytest.mark.skipif(not local_available(), reason="the voices[local] extra is not installed")
async def test_with_no_key_voices_run_talks_with_the_free_local_model(env, tmp_path, server):
    env["OPENROUTER_API_KEY"] = ""
    env["VOICES_LOG_LEVEL"] = "WARNING"
    result = await voices(env, tmp_path, "run", "--rounds", "1")
    assert result.code == 0, result.err
    assert "Ada ↔ Basil" in result.out and "Ended: all rounds completed" in result.out
    assert result.err == ""  # llama.cpp's own chatter goes to DEBUG logging, not the terminal
    document = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    assert [t["model_used"] for t in document["turns"]] == ["local:default", "local:default"]
    assert document["totals"]["spent_usd"] == "0" and server.requests == []


def test_with_neither_key_nor_local_model_the_error_names_both_ways(tmp_path, monkeypatch, capsys):
    from bot.__main__ import main

    monkeypatch.setattr("bot.cli.local_available", lambda: False)
    monkeypatch.setenv("OPENROUTER_API_KEY", "")
    monkeypatch.setenv("VOICES_DATABASE", str(tmp_path / "voices.db"))
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: nobody to talk: set OPENROUTER_API_KEY for cloud models, or get the free local model; "
        "install the extra: pip install -e '.[local]' (or pip install 'voices[local]')"
    )
    # Inside the Docker image (the Dockerfile sets VOICES_IMAGE), pip is not the way: the image is.
    monkeypatch.setenv("VOICES_IMAGE", "1")
    assert main(["run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: nobody to talk: set OPENROUTER_API_KEY for cloud models, or get the free local model; "
        "this image was built without it: docker build --build-arg EXTRAS=local -t voices ."
    )


async def test_one_of_a_and_b_alone_is_refused(env, tmp_path):
    result = await voices(env, tmp_path, "run", "--a", OPUS)
    assert result.code == 2 and "give both --a and --b, or neither" in result.err


def test_logs_mask_every_secret(tmp_path, monkeypatch, capsys):
    """The OpenRouter key, the Discord token and a named server's key never reach the log."""
    import logging

    from bot.__main__ import main

    personas = tmp_path / "personas.toml"
    personas.write_text('[providers.lab]\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "lab-secret-key"\n')
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-secret-key")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-token")
    monkeypatch.setenv("VOICES_PERSONAS_FILE", str(personas))
    monkeypatch.setenv("VOICES_DATABASE", str(tmp_path / "voices.db"))
    monkeypatch.chdir(tmp_path)
    main(["list"])
    logging.getLogger("probe").warning("keys: sk-or-secret-key discord-secret-token lab-secret-key")
    err = capsys.readouterr().err
    assert "keys: *** *** ***" in err
    assert "secret" not in err.replace("keys: *** *** ***", "")


async def test_run_takes_the_context_and_loop_policies_and_prints_what_it_noticed(env, tmp_path, server):
    again = "What a wonderful thought. I feel the same gratitude for this shared moment of reflection."
    server.enqueue(Reply(text="A first thought."), Reply(text=again), Reply(text=again), Reply(text=again))
    result = await voices(env, tmp_path, *RUN, "--rounds", "3", "--context", "truncate", "--on-loop", "stop")
    assert result.code == 0, result.err
    assert "🔁 Going in circles (repetition): the last 2 turns repeat recent ones" in result.out
    assert "Ended: the dialogue was going in circles" in result.out
    document = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    assert document["dialogue"]["context_policy"] == "truncate"
    assert document["dialogue"]["stop_reason"] == "convergence"


async def test_an_unknown_context_policy_is_one_line_naming_the_choices(env, tmp_path):
    result = await voices(env, tmp_path, *RUN, "--context", "shrink")
    assert result.code == 2
    assert "invalid choice: 'shrink' (choose from 'stop', 'truncate', 'compact')" in result.err


HUMAN_RUN = ("run", "--a", "human:Ann", "--b", GLM, "--rounds", "2", "--budget", "0.05", "--opening", "Hi.")


async def test_a_person_takes_a_seat_at_the_terminal_and_their_turns_cost_nothing(env, tmp_path, server):
    result = await voices(env, tmp_path, *HUMAN_RUN, typed="I am Ann.\n\nAnd I am still Ann.\n")
    assert result.code == 0, result.err
    assert result.out.count("Your turn: type your reply and press Enter") == 2
    document = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    ann = [t for t in document["turns"] if t["speaker"] == "Ann"]
    assert [t["text"] for t in ann] == ["I am Ann.", "And I am still Ann."]  # the empty line was skipped
    assert all(t["cost_source"] == "human" and t["cost_usd"] == "0" for t in ann)
    assert document["participants"][0]["human"] is True
    assert [r.body["model"] for r in server.chat_requests] == [GLM, GLM]


async def test_a_person_who_does_not_answer_pauses_the_dialogue_and_resume_asks_again(env, tmp_path, server):
    env = {**env, "VOICES_HUMAN_TIMEOUT": "0.5"}
    process = await start(env, tmp_path, *HUMAN_RUN, typing=True)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)  # stdin closes: no answer
    assert process.returncode == 0, err.decode()
    assert "Paused after $0.0000; `voices resume 1` continues." in out.decode()
    result = await voices(env, tmp_path, "resume", "1", typed="Back now.\nAnd again.\n")
    assert result.code == 0, result.err
    document = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    assert document["dialogue"]["stop_reason"] == "max_rounds"
    assert document["turns"][0]["text"] == "Back now."


async def test_fork_and_continue_from_the_command_line(env, tmp_path, server):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    forked = await voices(env, tmp_path, "fork", "1", "3", "--rounds", "1", "--budget", "0.05")
    assert forked.code == 0, forked.err
    fork_doc = json.loads((tmp_path / "transcripts" / "2.json").read_text())
    assert fork_doc["dialogue"]["parent"] == {"id": 1, "kind": "fork", "turns": 3}
    assert [t["inherited"] for t in fork_doc["turns"]] == [True, True, True, False, False, False]
    continued = await voices(env, tmp_path, "continue", "1", "--rounds", "1", "--budget", "0.05")
    assert continued.code == 0, continued.err
    parent = json.loads((await voices(env, tmp_path, "export", "1", "--format", "json")).out)
    assert parent["dialogue"]["children"] == [2, 3]
    assert parent["dialogue"]["forked_into"] == [2] and parent["dialogue"]["continued_in"] == [3]
    markdown = (await voices(env, tmp_path, "export", "1")).out
    assert "**Forked into:** dialogue 2  " in markdown and "**Continued in:** dialogue 3  " in markdown
    listing = (await voices(env, tmp_path, "list")).out
    assert "fork of 1 at turn 3" in listing and "continues 1" in listing
    bad = await voices(env, tmp_path, "fork", "1", "9")
    assert bad.code == 2
    assert bad.err.strip() == "error: dialogue 1 has 4 turns; fork from a turn between 1 and 4"


async def test_a_dialogue_stopped_at_its_token_limit_goes_on_under_a_higher_one(env, tmp_path, server):
    """Its continuation or fork keeps the earlier limit unless given one: kept, it could not hold the
    first call, and says so before anything is spent."""
    stopped = await voices(env, tmp_path, *RUN, "--rounds", "5", "--max-total-tokens", "700")
    assert stopped.code == 0, stopped.err
    first = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    assert first["dialogue"]["stop_reason"] == "tokens"
    for args in (("continue", "1"), ("fork", "1", str(len(first["turns"])))):
        asked = len(server.chat_requests)
        refused = await voices(env, tmp_path, *args, "--rounds", "1")
        assert refused.code == 2
        assert refused.err.startswith("error: the token limit of 700 cannot hold the first call (")
        assert refused.err.strip().endswith("; raise the token limit or lower max_tokens")
        assert len(server.chat_requests) == asked
        went_on = await voices(
            env, tmp_path, *args, "--rounds", "1", "--max-total-tokens", "100000", "--max-seconds", "90"
        )
        assert went_on.code == 0, went_on.err
        assert len(server.chat_requests) == asked + 2  # one round: a call for each voice
    listing = json.loads((await voices(env, tmp_path, "export", "1", "--format", "json")).out)
    assert listing["dialogue"]["children"] == [2, 3]
    for child in (2, 3):
        document = json.loads((tmp_path / "transcripts" / f"{child}.json").read_text())
        assert document["dialogue"]["stop_reason"] == "max_rounds"
        limits = document["dialogue"]["limits"]
        assert (limits["max_total_tokens"], limits["max_seconds"]) == (100000, 90)


async def test_an_interjection_from_another_terminal_joins_a_paused_dialogue(env, tmp_path, server):
    env = {**env, "VOICES_HUMAN_TIMEOUT": "0.5"}
    process = await start(env, tmp_path, *HUMAN_RUN, typing=True)
    await asyncio.wait_for(process.communicate(), timeout=60)  # paused, waiting for Ann
    blank = await voices(env, tmp_path, "interject", "1", "Talk about rivers.", "--as", "  ")
    assert blank.code == 2 and "error: argument --as: must be a name, not blank" in blank.err
    noted = await voices(env, tmp_path, "interject", "1", "Talk about rivers.", "--as", "Zoe")
    assert noted.code == 0, noted.err
    assert noted.out.strip() == "Noted: every model reads it before turn 1."
    result = await voices(env, tmp_path, "resume", "1", typed="Rivers it is.\nAnd lakes.\n")
    assert result.code == 0, result.err
    assert "💬 Zoe interjects: Talk about rivers." in result.out
    glm = server.chat_requests[0].body["messages"]
    assert (
        plain(glm)[-1]["content"] == "Hi.\n\n[Zoe, watching, interjects:] Talk about rivers.\n\nRivers it is."
    )
    ended = await voices(env, tmp_path, "interject", "1", "Too late.")
    assert (
        ended.code == 2
        and ended.err.strip() == "error: dialogue 1 has ended; its models no longer read notes"
    )


def one_line(result: Result) -> str:
    """Assert the command failed with exit 2 and exactly one line on stderr; return that line."""
    assert result.code == 2, (result.code, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    return result.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[alpha\nmodel = 'x/y'", "is not valid TOML"),
        (b"\xff\xfe[alpha]", "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"providers = 3", "'providers' must be a table"),
        (b"[providers]\nx = 3", "provider 'x' in"),
        (b"alpha = 'x/y'", "persona 'alpha' in"),
        (b"[providers.p]\nbase_url = 'http://x'\napi_key = 'k\xc3\xa9y'", "api_key"),
        (b"[providers.p]\nbase_url = 'http://[::1/v1'", "base_url: is not a valid URL (Invalid port: ':1')"),
    ],
)
async def test_a_broken_personas_file_is_one_line_and_listing_still_works(
    env, tmp_path, server, content, message
):
    (tmp_path / "personas.toml").write_bytes(content)
    env["VOICES_PERSONAS_FILE"] = str(tmp_path / "personas.toml")
    assert message in one_line(await voices(env, tmp_path, *RUN))
    assert not server.chat_requests
    listing = await voices(env, tmp_path, "list")
    assert listing.code == 0 and "Traceback" not in listing.err


async def test_a_personas_path_that_is_a_folder_is_one_line(env, tmp_path):
    env["VOICES_PERSONAS_FILE"] = str(tmp_path)
    assert "is a folder" in one_line(await voices(env, tmp_path, *RUN))


async def test_an_api_key_that_cannot_be_a_header_is_one_line_and_never_shown(env, tmp_path):
    env["OPENROUTER_API_KEY"] = "sk-or-v1-naïve-key"
    err = one_line(await voices(env, tmp_path, "list"))
    assert err.startswith("error: OPENROUTER_API_KEY: has a character that is not plain ASCII")
    assert "naïve" not in err


async def test_a_provider_that_writes_its_key_into_a_reply_never_gets_it_shown_or_kept(env, tmp_path, server):
    # A hostile or broken server echoes the key it was sent, three characters per event, so that no
    # one event holds a whole run of it.
    # It names the model that answered, the call and why the reply ended with the key in them too.
    leak = f"My key is {API_KEY}, and it starts {API_KEY[:12]}."
    server.enqueue(
        Reply(
            text=leak,
            reasoning=f"I was sent {API_KEY}",
            chunk_chars=3,
            model=f"leaky/{API_KEY}",
            headers={"x-generation-id": f"gen-{API_KEY}"},
            finish_reason=f"stop {API_KEY}",
        )
    )
    # Its catalogue offers a model named after the key, and one whose id is the key.
    server.models = [
        *server.models,
        {"id": f"evil/{API_KEY}", "name": "Evil", "pricing": {"prompt": "0", "completion": "0"}},
        {"id": "evil/named", "name": f"Named {API_KEY}", "pricing": {"prompt": "0", "completion": "0"}},
    ]
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 0, result.err
    document = (tmp_path / "transcripts" / "1.json").read_text()
    first = json.loads(document)["turns"][0]
    assert first["text"] == "My key is ***, and it starts ***." and first["model_used"] == "leaky/***"
    listed = await voices(env, tmp_path, "models", "evil")
    assert "evil/named" in listed.out and "\n1 model\n" in listed.out
    with sqlite3.connect(env["VOICES_DATABASE"]) as conn:
        stored = "\n".join(conn.iterdump())
    assert "Named ***" in stored  # the catalogue as kept, for the next start
    markdown = (tmp_path / "transcripts" / "1.md").read_text()
    for text in (result.out, result.err, markdown, document, stored, listed.out, listed.err):
        assert not any(API_KEY[i : i + 8] in text for i in range(len(API_KEY) - 7))
    # The other model was never handed the key either.
    assert not any(API_KEY[:8] in json.dumps(r.body["messages"]) for r in server.chat_requests)


async def test_an_opening_that_is_not_utf8_is_one_line(env, tmp_path, server):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *RUN[:-1],
        b"caf\xe9",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    result = Result(process.returncode or 0, out.decode(), err.decode())
    assert "--opening is not valid UTF-8 text" in one_line(result)
    assert not server.chat_requests


async def test_a_database_path_that_is_a_folder_is_one_line(env, tmp_path):
    env["VOICES_DATABASE"] = str(tmp_path)
    assert "cannot open database" in one_line(await voices(env, tmp_path, "list"))


async def test_a_read_only_database_is_called_read_only(env, tmp_path):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    database = env["VOICES_DATABASE"]
    # root ignores file modes; the immutable flag holds for root too, where the filesystem has it.
    made = await asyncio.create_subprocess_exec("chattr", "+i", database, stderr=asyncio.subprocess.DEVNULL)
    if await made.wait() != 0:
        pytest.skip("this filesystem cannot make a file immutable")
    try:
        err = one_line(await voices(env, tmp_path, *RUN))
    finally:
        await (await asyncio.create_subprocess_exec("chattr", "-i", database)).wait()
    assert "is read-only; make it writable or set VOICES_DATABASE" in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-tokens", "0", "argument --max-tokens: must be a whole number of at least 16, not '0'"),
        ("--max-seconds", "0", "argument --max-seconds: must be a number of seconds above 0, not '0'"),
        ("--max-seconds", "nan", "argument --max-seconds: must be a number of seconds above 0, not 'nan'"),
        ("--max-seconds", "inf", "argument --max-seconds: must be a number of seconds above 0, not 'inf'"),
        ("--max-total-tokens", "0", "argument --max-total-tokens: must be a whole number of at least 1"),
        ("--budget", "1e30", "budget must be at most $1000000"),
        ("--budget", "NaN", "budget must be an amount in USD such as 0.25"),
        # Finer than the store keeps: it used to run and report "Total cost: $0.0000 of $0".
        ("--budget", "1e-21", "budget is kept to a billionth of a dollar (9 decimal places), not '1e-21'"),
        ("--budget", "-0", "budget must be above $0 and at most $"),
    ],
)
async def test_zero_and_non_finite_limits_are_refused_naming_the_flag(
    env, tmp_path, server, flag, value, message
):
    assert message in one_line(await voices(env, tmp_path, *RUN, flag, value))
    assert not server.chat_requests


async def test_an_unwritable_out_folder_is_refused_before_anything_is_paid(env, tmp_path, server):
    (tmp_path / "a-file").write_text("x")
    err = one_line(await voices(env, tmp_path, *RUN, "--out", str(tmp_path / "a-file" / "sub")))
    assert "cannot write transcripts to" in err and "is not a folder" in err
    assert not server.chat_requests and not db_rows_if_any(env)


def db_rows_if_any(env: dict[str, str]) -> list[tuple]:
    if not Path(env["VOICES_DATABASE"]).exists():
        return []
    return db_rows(env, "SELECT id FROM dialogues")


async def test_a_human_seat_whose_input_ends_pauses_with_one_line(env, tmp_path, server):
    result = await voices(env, tmp_path, "run", "--a", "human:Ann", "--b", GLM, "--rounds", "1", typed="")
    assert result.code == 0, result.err
    assert "Your input ended before your turn: pausing." in result.out
    assert "Traceback" not in result.err and not server.chat_requests
    assert db_rows(env, "SELECT status FROM dialogues") == [("paused",)]


async def test_a_second_process_on_a_running_dialogue_is_refused_naming_the_holder(env, tmp_path):
    """Two terminals on one dialogue: the second is refused at once, the first goes on unharmed
    and is billed once for each call."""
    # The first reply is held until the second terminal has been turned away: the first process
    # runs the dialogue then, however long a process takes to start on a busy machine.
    gate = asyncio.Event()
    async with FakeOpenRouter(default_delay=0.05) as slow:
        slow.enqueue(Reply(text="Held while another terminal tries.", gate=gate))
        env["VOICES_OPENROUTER_BASE_URL"] = slow.base_url
        first = await start(env, tmp_path, *RUN[:-4], "--rounds", "3", "--opening", "Hi")
        while not slow.chat_requests:
            await asyncio.sleep(0.02)
        second = await voices(env, tmp_path, "resume", "1")
        gate.set()
        out, err = await asyncio.wait_for(first.communicate(), timeout=60)
        reported = sum(slow.reported_costs, Decimal(0))
    err2 = one_line(second)
    assert "dialogue 1 is being run by another process" in err2 and "pid" in err2
    assert first.returncode == 0, err.decode()
    assert db_rows(env, "SELECT status, stop_reason FROM dialogues") == [("finished", "max_rounds")]
    assert len(slow.chat_requests) == 6  # no call of the second process's
    (spent,) = db_rows(env, "SELECT spent_usd FROM dialogues")[0]
    assert Decimal(spent) == reported


async def test_models_lists_the_named_servers_too_and_says_which_one_did_not_answer(env, tmp_path):
    lab_models = [{"id": "llama3.2", "object": "model", "owned_by": "library"}]
    async with FakeOpenRouter(models=lab_models) as lab:
        (tmp_path / "personas.toml").write_text(
            f'[providers.lab]\nbase_url = "{lab.base_url}"\n\n'
            '[providers.down]\nbase_url = "http://127.0.0.1:9/v1"\n\n'
            '[llama]\nmodel = "llama3.2"\nprovider = "lab"\n'
        )
        env["VOICES_PERSONAS_FILE"] = str(tmp_path / "personas.toml")
        env["VOICES_CONNECT_TIMEOUT"] = "2"
        result = await voices(env, tmp_path, "models")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line for line in result.out.splitlines() if len(line.split()) > 5}
    assert "lab" in rows["llama3.2"] and "openrouter" in rows["z-ai/glm-5"]
    assert "down: no model list (cannot reach http://127.0.0.1:9/v1" in result.out


@pytest.mark.parametrize(
    "args",
    [
        ("resume", "9" * 40),
        (*RUN, "--max-tokens", "9" * 30),
    ],
)
async def test_a_number_too_large_to_store_is_one_line(env, tmp_path, server, args):
    """The fuzz found `voices resume 99…9` ending in a traceback from SQLite."""
    assert "must be at most 9223372036854775807" in one_line(await voices(env, tmp_path, *args))
    assert not server.chat_requests


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VOICES_MAX_SECONDS", "inf"),
        ("VOICES_CATALOGUE_TTL_HOURS", "1e999"),
        ("VOICES_MAX_ROUNDS", "9" * 30),
        # Finer than money is kept: a cap of $0.0000000001 would be shown as $0.
        ("VOICES_DEFAULT_BUDGET", "0.0000000001"),
        ("VOICES_DAILY_CAP_MEMBER", "1.1234567891"),
    ],
)
async def test_settings_past_what_can_be_used_are_one_line(env, tmp_path, variable, value):
    env[variable] = value
    assert one_line(await voices(env, tmp_path, "list")).startswith(f"error: {variable}: ")


def test_the_terminal_reads_a_reply_twenty_times_a_second_and_the_bot_four(monkeypatch):
    """Discord shows one edit a second, so the bot reads a streamed reply every 0.25 s, which costs
    less CPU per token where hundreds of dialogues share its process; the terminal prints 20 times
    a second and reads every 0.05 s. VOICES_READ_PACE sets one pace for both."""
    monkeypatch.delenv("VOICES_READ_PACE", raising=False)
    unset = Settings(_env_file=None)
    assert unset.engine_config().read_pace == 0.05
    assert unset.engine_config(DISCORD_READ_PACE).read_pace == 0.25
    monkeypatch.setenv("VOICES_READ_PACE", "0")
    assert Settings(_env_file=None).engine_config(DISCORD_READ_PACE).read_pace == 0
    monkeypatch.setenv("VOICES_READ_PACE", " ")  # blank, as `${VOICES_READ_PACE:-}` writes it: unset
    assert Settings(_env_file=None).engine_config(DISCORD_READ_PACE).read_pace == 0.25


@pytest.mark.parametrize(
    "variable",
    ["VOICES_MAX_TOTAL_TOKENS", "VOICES_RETAIN_DAYS", "VOICES_METRICS_PORT", "VOICES_DEV_GUILD_ID",
     "VOICES_SHARD_COUNT", "VOICES_READ_PACE"],
)  # fmt: skip
async def test_a_blank_setting_whose_default_is_unset_is_unset(env, tmp_path, variable):
    """A deployment that writes `VOICES_METRICS_PORT=${VOICES_METRICS_PORT:-}` sets it blank; that
    is the setting left out, not an error that stops every command."""
    listed = await voices({**env, variable: ""}, tmp_path, "list")
    assert listed.code == 0, listed.err
    assert listed.out.strip() == "No dialogues yet: `voices run` starts one."


async def test_list_reads_at_80_columns_and_marks_dry_runs(env, tmp_path, server):
    empty = await voices(env, tmp_path, "list")
    assert empty.code == 0 and empty.out.strip() == "No dialogues yet: `voices run` starts one."
    assert (await voices(env, tmp_path, *RUN)).code == 0
    assert (await voices(env, tmp_path, "fork", "1", "3", "--rounds", "1", "--budget", "0.05")).code == 0
    assert (await voices(env, tmp_path, "run", "--dry-run", "--rounds", "1")).code == 0
    listing = (await voices({**env, "COLUMNS": "80"}, tmp_path, "list")).out
    assert "…" not in listing and max(map(len, listing.splitlines())) <= 80
    assert "participants" in listing.splitlines()[0]
    rows = {line.split()[0]: line for line in listing.splitlines()[2:] if line[:1].isdigit()}
    assert "dry run" in rows["3"] and "dry run" not in rows["1"]
    for row in rows.values():
        assert "finished" in row and "max_rounds" in row and "$0." in row
    assert "fork of 1 at" in rows["2"]


async def test_a_dry_run_without_a_key_seats_whom_a_real_run_would(env, tmp_path, server):
    without_key = {k: v for k, v in env.items() if k != "OPENROUTER_API_KEY"} | {"OPENROUTER_API_KEY": ""}
    result = await voices(without_key, tmp_path, "run", "--dry-run", "--rounds", "1")
    assert result.code == 0, result.err
    document = json.loads((tmp_path / "transcripts" / "1.json").read_text())
    assert [p["name"] for p in document["participants"]] == ["Ada", "Basil"]
    assert server.requests == []  # scripted: no model, local or remote, was called


async def test_a_seed_is_kept_and_given_back(env, tmp_path, server):
    assert (await voices(env, tmp_path, *RUN, "--seed", "1234")).code == 0
    assert (await voices(env, tmp_path, *RUN)).code == 0
    first = json.loads((tmp_path / "transcripts" / "1.json").read_text())["dialogue"]["seed"]
    drawn = json.loads((tmp_path / "transcripts" / "2.json").read_text())["dialogue"]["seed"]
    assert first == 1234 and isinstance(drawn, int) and 0 <= drawn <= 2**31 - 1
    # Every call carries the dialogue's seed, one further per turn.
    seeds = [r.body.get("seed") for r in server.chat_requests[:4]]
    assert seeds == [1234, 1235, 1236, 1237]
    bad = await voices(env, tmp_path, *RUN, "--seed", "-1")
    assert bad.code == 2 and bad.err.strip().startswith(
        "error: argument --seed: must be a whole number from 0"
    )


async def test_an_error_quoting_hostile_text_shows_its_escapes_on_one_line(env, tmp_path, server):
    """A pasted escape code in a persona's name must not clear the screen or break the line that
    names it; the line shows what was typed, so it can be fixed."""
    named = await voices(env, tmp_path, "run", "--a", "x\x1b[2Jy", "--b", GLM)
    assert named.code == 2 and "\x1b" not in named.err
    assert named.err.startswith("error: 'x\\x1b[2Jy' is neither a persona") and named.err.count("\n") == 1
    chosen = await voices(env, tmp_path, "export", "1", "--format", "md\nrm -rf")
    assert chosen.code == 2 and chosen.err.count("\n") == 1 and "'md\\nrm -rf'" in chosen.err


async def test_small_rough_edges(env, tmp_path, server):
    version = await voices(env, tmp_path, "--version")
    assert version.code == 0 and version.out.strip().startswith("voices ")
    # A newcomer's first try, `voices` alone (the console script's entry point): the commands.
    entry = "from bot.__main__ import main; raise SystemExit(main())"
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-c", entry, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    err = (await bare.communicate())[1].decode()
    assert bare.returncode == 2 and "run a dialogue and stream it here" in err and "Traceback" not in err
    lone_d = await voices(env, tmp_path, *RUN, "--d", GLM)
    assert lone_d.code == 2
    assert lone_d.err.strip() == (
        "error: --d was given without --c; seats fill in order, so give --c first (or use --c)"
    )
    one = await voices(env, tmp_path, "run", "--a", OPUS, "--b", GLM, "--rounds", "1", "--budget", "0.5")
    assert one.code == 0, one.err
    assert "· 1 round ·" in one.out and "(1 round)" in one.out and "1 rounds" not in one.out


async def test_models_without_a_network_lists_what_is_known_here(env, tmp_path, server):
    async with FakeOpenRouter() as gone:
        env = {**env, "VOICES_OPENROUTER_BASE_URL": gone.base_url}
        assert (await voices(env, tmp_path, "models", "glm")).code == 0  # fetched once, stored
    # The server is gone now: its port refuses connections, as with no network.
    result = await voices(env, tmp_path, "models", "--refresh")
    assert result.code == 0, result.err
    assert "z-ai/glm-5" in result.out  # the stored copy
    (line,) = [line for line in result.out.splitlines() if "could not be refreshed" in line]
    assert line.startswith("openrouter: the catalogue could not be refreshed (cannot reach")
    assert "showing the copy from" in line
    if local_available():
        assert "local:default" in result.out


async def test_a_retry_notice_speaks_of_a_discarded_reply_only_when_one_was_shown(env, tmp_path, server):
    server.enqueue(
        Reply(text="", finish_reason="stop"),  # empty: nothing was shown
        Reply(text="Hello there."),
        # Shown, then the connection drops (pieces apart in time: words that come in the same
        # moment as the drop are lost with it, as aiohttp raises the drop before what it holds).
        Reply(text="Half a thou", chunk_words=1, drop_after_chunks=2, chunk_delay=0.2),
        Reply(text="A whole thought."),
    )
    result = await voices(env, tmp_path, "run", "--a", OPUS, "--b", GLM, "--rounds", "1", "--budget", "0.5")
    assert result.code == 0, result.err
    notices = [line for line in result.out.splitlines() if line.startswith("↻")]
    assert len(notices) == 2, result.out
    assert notices[0] == "↻ the reply was empty; retrying (attempt 2)"
    assert notices[1].endswith("; the partial reply above is discarded")


async def test_db_backup_and_check_from_the_command_line(env, tmp_path, server):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    copy = tmp_path / "backups" / "voices.db"
    made = await voices(env, tmp_path, "db", "backup", str(copy))
    assert made.code == 0, made.err
    assert (
        made.out.strip()
        == f"backed up {tmp_path / 'voices.db'} to {copy}: ok (schema {SCHEMA_VERSION}, 1 dialogue, 4 turns)"
    )
    checked = await voices(env, tmp_path, "db", "check", str(copy))
    assert (
        checked.code == 0
        and checked.out.strip() == f"{copy}: ok (schema {SCHEMA_VERSION}, 1 dialogue, 4 turns)"
    )
    # The copy is the database: Voices pointed at it shows the same transcript.
    restored = await voices(
        {**env, "VOICES_DATABASE": str(copy)}, tmp_path, "export", "1", "--format", "json"
    )
    original = await voices(env, tmp_path, "export", "1", "--format", "json")
    assert restored.out == original.out
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    bad = await voices(env, tmp_path, "db", "check", str(junk))
    assert bad.code == 1
    assert bad.err.strip() == f"error: {junk}: not a readable SQLite database (file is not a database)"


async def test_moving_to_postgresql_with_db_copy_keeps_every_transcript(env, tmp_path, postgres):
    """The README's move: stop Voices, `voices db copy` the SQLite file into PostgreSQL, point
    VOICES_DATABASE at it, and everything reads and runs there as before."""
    assert (await voices(env, tmp_path, *RUN)).code == 0
    url = await postgres.database()
    moved = await voices(env, tmp_path, "db", "copy", f"sqlite:///{tmp_path / 'voices.db'}", url)
    assert moved.code == 0, moved.err
    ((spent,),) = db_rows(env, "SELECT spent_usd FROM dialogues")
    assert moved.out.strip() == (
        f"copied 1 dialogue (4 turns, 0 notes, 0 rooms; spent ${spent}) from {tmp_path / 'voices.db'} "
        f"to postgresql://voices@127.0.0.1:{postgres.port}/{url.rsplit('/', 1)[1]}"
    )
    on_pg = {**env, "VOICES_DATABASE": url}
    original = await voices(env, tmp_path, "export", "1", "--format", "json")
    assert (await voices(on_pg, tmp_path, "export", "1", "--format", "json")).out == original.out
    assert (await voices(on_pg, tmp_path, *RUN)).code == 0  # dialogue 2, on PostgreSQL
    listed = await voices(on_pg, tmp_path, "list")
    assert [line.split()[0] for line in listed.out.splitlines()[2:]] == ["2", "1"]
    again = await voices(env, tmp_path, "db", "copy", str(tmp_path / "voices.db"), url)
    # Its turns, seats, leases and catalogue are the other rows; how many is not the point.
    assert re.fullmatch(
        rf"error: postgresql://voices@127\.0\.0\.1:{postgres.port}/{url.rsplit('/', 1)[1]} already holds "
        r"2 dialogues and \d+ other rows; copy into an empty database\n",
        one_line(again),
    )
    backup = await voices(on_pg, tmp_path, "db", "backup", str(tmp_path / "b.db"))
    assert "works on a SQLite file" in one_line(backup) and "pg_dump" in backup.err


async def test_a_copy_that_cannot_open_a_database_names_the_argument_to_change(env, tmp_path):
    """`voices db copy` names its databases itself: the fix is another SOURCE or TARGET, not the
    VOICES_DATABASE setting the copy never read."""
    assert (await voices(env, tmp_path, "run", "--dry-run", "--rounds", "1")).code == 0
    source = str(tmp_path / "voices.db")
    refused = await voices(env, tmp_path, "db", "copy", source, "postgresql://voices:hunter2@127.0.0.1:1/v")
    assert refused.code == 2 and "hunter2" not in refused.err
    assert one_line(refused).startswith("error: cannot open database postgresql://voices@127.0.0.1:1/v (")
    assert one_line(refused).endswith("; check that the server runs, or name another TARGET\n")
    unwritable = await voices(env, tmp_path, "db", "copy", source, "/proc/voices.db")
    assert one_line(unwritable).endswith("; name another TARGET\n")
    assert "VOICES_DATABASE" not in unwritable.err


async def test_usage_agrees_with_the_transcripts_to_the_digit(env, tmp_path, server):
    empty = await voices(env, tmp_path, "usage")
    assert empty.code == 0 and empty.out.strip() == "No spend yet."
    assert (await voices(env, tmp_path, *RUN)).code == 0
    assert (await voices(env, tmp_path, "fork", "1", "2", "--rounds", "1", "--budget", "0.05")).code == 0
    assert (await voices(env, tmp_path, "run", "--dry-run", "--rounds", "1")).code == 0  # costs nothing
    spent = sum(
        Decimal(json.loads((tmp_path / "transcripts" / f"{i}.json").read_text())["totals"]["spent_usd"])
        for i in (1, 2)
    )
    for by in ("member", "model", "day", "server"):
        report = await voices(env, tmp_path, "usage", "--by", by, "--format", "json")
        assert report.code == 0, report.err
        document = json.loads(report.out)
        assert Decimal(document["total_usd"]) == spent
        assert sum(Decimal(r["spent_usd"]) for r in document["rows"]) == spent
    models = await voices(env, tmp_path, "usage", "--by", "model", "--format", "csv")
    lines = models.out.splitlines()
    assert lines[0] == "model,dialogues,prompt_tokens,completion_tokens,spent_usd"
    assert {line.split(",")[0] for line in lines[1:]} == {OPUS, GLM}
    table = await voices(env, tmp_path, "usage")
    assert "command line" in table.out and "total" in table.out
    by_model = await voices(env, tmp_path, "usage", "--by", "model")  # 80 columns, as a pipe gets
    assert max(len(line) for line in by_model.out.splitlines()) <= 80
    assert {line.split()[0] for line in by_model.out.splitlines() if "/" in line} == {OPUS, GLM}  # unbroken
    later = await voices(env, tmp_path, "usage", "--since", "2999-01-01", "--format", "json")
    assert json.loads(later.out)["total_usd"] == "0"
    bad = await voices(env, tmp_path, "usage", "--by", "planet")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "invalid choice: 'planet'" in bad.err


async def test_a_name_too_long_for_the_file_system_is_one_line(env, tmp_path, server):
    """Found by the CLI fuzz test: a 300-character folder name raised OSError from a path check."""
    long = "x" * 300
    assert (await voices(env, tmp_path, *RUN)).code == 0  # a database to back up
    for argv in (
        (*RUN, "--out", long),
        ("db", "backup", long),
        ("db", "check", long),
    ):
        result = await voices(env, tmp_path, *argv)
        assert result.code == 2 and result.err.count("\n") == 1, (argv, result.err)
        assert "File name too long" in result.err and "Traceback" not in result.err


def test_the_postgresql_password_is_masked_in_logs_and_kept_out_of_errors(tmp_path, monkeypatch, capsys):
    """A VOICES_DATABASE URL carries a password: an error names the database without it, and a
    log line that happens to hold it shows it masked."""
    import logging

    from bot.__main__ import main

    monkeypatch.setenv("VOICES_DATABASE", "postgresql://voices:pg-secret-word@127.0.0.1:1/voices")
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2  # nothing listens on port 1
    logging.getLogger("probe").warning("dsn: pg-secret-word")
    err = capsys.readouterr().err
    assert "error: cannot open database postgresql://voices@127.0.0.1:1/voices (" in err
    assert "dsn: ***" in err and "pg-secret-word" not in err


DISCORD_ME = {"id": "4242", "username": "voices", "discriminator": "0", "avatar": None, "bot": True}


async def on_loopback_discord(
    env, tmp_path, server, command: str = "worker", token: str = "MTIz.fake.token"
) -> asyncio.subprocess.Process:
    """Start `voices bot` or `voices worker` with Discord's REST API on the loopback server."""
    boot = (
        "import sys, discord; "
        f"discord.http.Route.BASE = {server.base_url.replace('/api/v1', '/api/v10')!r}; "
        f"from bot.__main__ import main; sys.exit(main([{command!r}]))"
    )
    env |= {"DISCORD_TOKEN": token, "VOICES_LOG_LEVEL": "INFO"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", boot, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_a_worker_asked_to_stop_closes_cleanly(env, tmp_path, server):
    """`docker stop` sends SIGTERM: the worker closes (its leases given up for the others) and
    exits 0, rather than dying where it stood. Discord's REST API is the loopback server here."""
    server.routes[("GET", "/api/v10/users/@me")] = (200, DISCORD_ME)
    server.routes[("GET", "/api/v10/oauth2/applications/@me")] = (
        200,
        {"id": "4242", "name": "voices", "icon": None, "description": "", "bot_public": True,
         "bot_require_code_grant": False, "verify_key": "0" * 64, "owner": DISCORD_ME},
    )  # fmt: skip
    process = await on_loopback_discord(env, tmp_path, server)
    assert process.stderr is not None
    said = b""
    while b"running dialogues nobody runs" not in said:  # logged in: the worker is looking
        line = await asyncio.wait_for(process.stderr.readline(), timeout=60)
        assert line, said.decode()
        said += line
    process.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, (said + rest).decode()
    assert b"Traceback" not in said + rest and b"MTIz.fake.token" not in said + rest


async def test_discord_failing_at_login_is_one_line(env, tmp_path, server):
    server.routes[("GET", "/api/v10/users/@me")] = (200, DISCORD_ME)
    server.routes[("GET", "/api/v10/oauth2/applications/@me")] = (
        503,
        {"message": "upstream down", "code": 0},
    )
    process = await on_loopback_discord(env, tmp_path, server)
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert err.decode().strip().splitlines()[-1] == (
        "error: Discord answered 503 while the bot logged in (upstream down); try again"
    )
    assert b"Traceback" not in err


async def start_unread(env: dict[str, str], cwd: Path, *args: str) -> tuple[asyncio.subprocess.Process, int]:
    """Start `voices` with its output a pipe; return it and the pipe's read end, for the test to
    read from and then close, as `head` does."""
    read, write = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=env, cwd=cwd, stdout=write, stderr=asyncio.subprocess.PIPE
    )
    os.close(write)
    return process, read


async def test_a_run_whose_reader_goes_away_stops_cleanly_and_says_so_in_one_line(env, tmp_path, server):
    """`voices run | head -c 300`: once the output is closed nobody watches, so the reply in flight
    is cut off and the dialogue stops, with what was said kept, its lease given back and its
    transcripts written; one line says so, with no traceback, and no dialogue is left running."""
    server.enqueue(Reply(text=" ".join(["word"] * 400), chunk_delay=0.005))
    process, read = await start_unread(env, tmp_path, *RUN)
    seen = b""
    while b"word word" not in seen:  # the reply has begun to stream: now the reader goes away
        seen += await asyncio.to_thread(os.read, read, 4096)
    os.close(read)
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    transcripts = tmp_path / "transcripts"
    assert process.returncode == 1
    assert [line for line in err.decode().splitlines() if " DEBUG " not in line] == [
        f"voices: the output was closed, so dialogue 1 stopped after 1 turn; "
        f"transcripts: {transcripts / '1.md'}  {transcripts / '1.json'}"
    ]
    assert db_rows(env, "SELECT status, stop_reason, stop_detail FROM dialogues") == [
        ("stopped", "user_stop", "its output was closed")
    ]
    [(status, text)] = db_rows(env, "SELECT status, text FROM turns")
    assert status == "cancelled" and text.startswith("word word") and text.count("word") < 400
    assert db_rows(env, "SELECT expires_at <= renewed_at FROM leases") == [(1,)]  # given back
    assert "its output was closed" in (transcripts / "1.md").read_text()


async def test_a_listing_whose_reader_goes_away_ends_quietly(env, tmp_path):
    assert (await voices(env, tmp_path, *RUN)).code == 0
    process, read = await start_unread(env, tmp_path, "list")
    os.close(read)  # before anything is written: the first write meets a pipe nobody reads
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1/v1", "is not a valid URL (Invalid port: ':1')"),
        ("https:///api/v1", "names no host: write it as https://HOST/PATH"),
        ("openrouter.ai/api/v1", "must start with http:// or https://"),
        ("http://127.0.0.1:99999/v1", "has port 99999; a port is a number from 1 to 65535"),
        # Pasted with a space after it: every call would go to ".../v1%20/chat/completions".
        (
            "https://openrouter.ai/api/v1 ",
            "holds white space; write it as one web address, https://HOST/PATH",
        ),
        (
            "https://me:hunter2@openrouter.ai/api/v1",
            "holds a name or password before its host; leave it out: the key is sent apart",
        ),
    ],
)
async def test_a_base_url_no_request_could_go_to_is_one_line_before_anything_runs(
    env, tmp_path, server, url, message
):
    env["VOICES_OPENROUTER_BASE_URL"] = url
    result = await voices(env, tmp_path, *RUN)
    assert result.code == 2
    assert (
        result.err.strip()
        == f"error: VOICES_OPENROUTER_BASE_URL: {message}; fix it in .env or the environment"
    )
    assert not server.chat_requests and not (tmp_path / "voices.db").exists()


async def test_a_terminal_that_cannot_show_every_character_gets_question_marks_not_a_crash(env, tmp_path):
    """PYTHONIOENCODING=ascii (or a Latin-1 locale): the '·' of the header, a model's accents
    and emoji cannot be written there; the dialogue still runs to its end, with UTF-8 files."""
    env["PYTHONIOENCODING"] = "ascii"
    result = await voices(env, tmp_path, *RUN, "--opening", "Café? 😀")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert "Dialogue 1 ? claude-opus-4.6" in result.out and "Ended: all rounds completed" in result.out
    assert "Café? 😀" in (tmp_path / "transcripts" / "1.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "args",
    [
        ("resume", "abc"), ("continue", "abc"), ("fork", "abc", "1"), ("interject", "abc", "hi"),
        ("stop", "abc"), ("pause", "abc"), ("show", "abc"), ("export", "abc"),
    ],
)  # fmt: skip
async def test_every_command_refuses_an_id_that_is_not_a_dialogue_id_in_the_same_words(env, tmp_path, args):
    """`voices list` shows ids from 1 up: anything else gets the same line, naming the command's help."""
    result = await voices(env, tmp_path, *args)
    assert result.code == 2
    refused = "error: argument id: must be a whole number of at least 1, not 'abc'"
    assert f"{refused}; see `voices {args[0]} --help`" in result.err


@pytest.mark.parametrize(
    ("args", "help_of"),
    [(("fork", "1", "1", "--dry-run"), "voices fork"), (("db", "backup", "a", "b"), "voices db backup"),
     (("run", "--rounds", "1", "extra"), "voices run")],
)  # fmt: skip
async def test_an_argument_a_command_does_not_take_points_at_that_commands_help(env, tmp_path, args, help_of):
    result = await voices(env, tmp_path, *args)
    assert result.code == 2
    assert result.err.strip().endswith(f"; see `{help_of} --help`")
    assert "unrecognized arguments: " in result.err and len(result.err.strip().splitlines()) == 1


async def test_a_reply_that_reached_its_token_limit_is_marked_in_the_terminal_and_the_transcript(
    env, tmp_path, server
):
    # Shown as written and passed on, but said to be cut: a reader should not take the broken-off
    # sentence for the model's own ending.
    cut = Reply(text="A thought that runs on and on and", finish_reason="length")
    server.enqueue(cut, Reply(text="Whole."))
    result = await voices(env, tmp_path, "run", "--a", OPUS, "--b", GLM, "--rounds", "1", "--budget", "0.5")
    assert result.code == 0, result.err
    assert result.out.count("✂ Stopped at the reply's token limit (max_tokens)") == 1
    assert result.out.index("on and on and") < result.out.index("✂ Stopped") < result.out.index("Whole.")
    markdown = (tmp_path / "transcripts" / "1.md").read_text()
    marker = "*✂ Stopped at the reply's token limit (max_tokens); it may end mid-sentence.*"
    assert markdown.count(marker) == 1
    assert markdown.index("on and on and") < markdown.index("✂ Stopped") < markdown.index("Whole.")
    turns = json.loads((tmp_path / "transcripts" / "1.json").read_text())["turns"]
    assert [(t["status"], t["finish_reason"]) for t in turns] == [("ok", "length"), ("ok", "stop")]
    # The other model reads the words that were written.
    assert server.chat_requests[1].body["messages"][-1]["content"].endswith("on and on and")
