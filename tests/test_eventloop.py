"""`voices` runs on uvloop where it is installed and on asyncio's own loop where it is not, with the
garbage collector set for many streams at once."""

import asyncio
import gc
import sys

import pytest

from bot import eventloop


@pytest.fixture(autouse=True)
def collector():
    """Leave the test process's collector as it was."""
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_voices_runs_on_uvloop_when_it_is_installed():
    pytest.importorskip("uvloop", reason="the fast extra is not installed")
    assert eventloop.run(loop_module()).startswith("uvloop")


def test_voices_runs_on_asyncios_loop_without_uvloop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert eventloop.run(loop_module()).startswith("asyncio")


def test_voices_collects_garbage_rarely_and_never_walks_the_modules_again():
    """A full collection walking every module's objects, every few hundred turns, was a pause of
    0.1 s in the relay at 300 dialogues (docs/benchmarks.md §2)."""
    eventloop.run(loop_module())
    assert gc.get_freeze_count() > 10_000  # the imports' objects
    assert gc.get_threshold()[0] == eventloop.YOUNG_EVERY > 700


def test_the_benchmarks_can_measure_asyncios_loop_and_cpythons_collector_where_uvloop_is_installed():
    threshold = gc.get_threshold()
    assert eventloop.run(loop_module(), prefer_uvloop=False, tune=False).startswith("asyncio")
    assert gc.get_threshold() == threshold
