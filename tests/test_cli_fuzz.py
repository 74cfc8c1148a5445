"""A fuzz of `voices` arguments, environment and personas files: whatever comes in, the answer is an
exit status and, on failure, one line; never a traceback."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.__main__ import main

VALUES = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1",
        "3",
        "0.01",
        "nan",
        "inf",
        "1e999",
        "-0",
        "abc",
        "é",
        "x" * 300,
        "$0.05",
        " ",
        "9" * 40,
    ]
)
FLAGS = st.sampled_from(
    [
        "--rounds", "--budget", "--max-tokens", "--max-seconds", "--max-total-tokens", "--opening",
        "--a", "--b", "--c", "--system-a", "--context", "--on-loop", "--summary-model", "--limit",
        "--format", "--out", "--as",
    ]
)  # fmt: skip
MODELS = st.sampled_from(["claude", "glm", "z-ai/glm-5", "nobody", "a/b", "local:/nope.gguf", "x" * 90])
COMMANDS = st.sampled_from(
    ["run", "resume", "list", "show", "export", "models", "fork", "continue", "interject"]
)
ENVIRONMENT = st.dictionaries(
    st.sampled_from(
        [
            "VOICES_DEFAULT_ROUNDS", "VOICES_MAX_ROUNDS", "VOICES_DEFAULT_BUDGET", "VOICES_MAX_BUDGET",
            "VOICES_MAX_SECONDS", "VOICES_LOG_LEVEL", "VOICES_CONTEXT_POLICY", "VOICES_LEASE_SECONDS",
            "VOICES_HUMAN_TIMEOUT", "OPENROUTER_API_KEY", "VOICES_OPENROUTER_BASE_URL", "VOICES_READ_PACE",
        ]
    ),
    VALUES,
    max_size=3,
)  # fmt: skip
PERSONAS = st.one_of(
    st.binary(max_size=60),
    st.lists(
        st.sampled_from(
            ["[a]\n", "model = 'x/y'\n", "name = ''\n", "max_tokens = 1\n", "[providers.p]\n",
             "base_url = 'ftp://x'\n", "temperature = 9\n", "provider = 'q'\n", "= 3\n", "[[a]]\n"]
        ),
        max_size=6,
    ).map(lambda lines: "".join(lines).encode()),
)  # fmt: skip


@st.composite
def command_lines(draw) -> list[str]:
    argv = [draw(COMMANDS)]
    if argv[0] in ("resume", "show", "export", "fork", "continue", "interject"):
        argv.append(draw(VALUES))
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(FLAGS)
        argv += [flag, draw(MODELS if flag in ("--a", "--b", "--c") else VALUES)]
    if argv[0] == "run" and draw(st.booleans()):
        argv.append("--dry-run")
    return argv


@settings(
    max_examples=int(os.environ.get("VOICES_PROPERTY_EXAMPLES", "100")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=command_lines(), environment=ENVIRONMENT, personas=PERSONAS)
def test_no_input_gives_a_traceback(
    tmp_path: Path, argv: list[str], environment: dict[str, str], personas: bytes
):
    (tmp_path / "personas.toml").write_bytes(personas)
    base = {
        # Nothing leaves the machine: a refused port on loopback stands for the provider.
        "VOICES_OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1",
        "VOICES_DATABASE": str(tmp_path / "v.db"),
        "VOICES_TRANSCRIPTS_DIR": str(tmp_path / "transcripts"),
        "VOICES_PERSONAS_FILE": str(tmp_path / "personas.toml") if personas else "",
        "VOICES_CONNECT_TIMEOUT": "1",
    }
    saved = dict(os.environ)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    os.environ.update({**base, **environment})
    if not os.environ["VOICES_PERSONAS_FILE"]:
        del os.environ["VOICES_PERSONAS_FILE"]
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(tmp_path)  # a relative --out ("", "3") writes here, not into the checkout
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own exit
                code = int(exit_.code or 0)
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
        root.handlers[:], root.level = handlers, level  # main() set up logging for a process
    errors = err.getvalue()
    assert "Traceback" not in errors, (argv, environment, errors)
    assert code in (0, 1, 2), (argv, code, errors)
    if code:
        lines = [line for line in errors.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, (argv, environment, errors)
