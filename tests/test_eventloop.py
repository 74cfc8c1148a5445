"""`voices` runs on uvloop where it is installed and on asyncio's own loop where it is not."""

import asyncio
import sys

import pytest

from bot import eventloop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_voices_runs_on_uvloop_when_it_is_installed():
    pytest.importorskip("uvloop", reason="the fast extra is not installed")
    assert eventloop.run(loop_module()).startswith("uvloop")


def test_voices_runs_on_asyncios_loop_without_uvloop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert eventloop.run(loop_module()).startswith("asyncio")
