"""The micro-batch trial: a llama.cpp build that dies reading a prompt in batches is found out in a
child process, once, and the model reads one token at a time instead of killing a dialogue."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from bot.providers.local import local_available, model_path
from bot.providers.microbatch import BATCHED, SINGLE, micro_batch

DIES = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
RAISES = [sys.executable, "-c", "raise SystemExit('not a model')"]


def test_a_build_that_dies_reads_one_token_at_a_time_and_says_how_to_rebuild(tmp_path, caplog):
    model, cache = tmp_path / "m.gguf", tmp_path / "cache.json"
    model.write_bytes(b"GGUF")
    with caplog.at_level(logging.WARNING):
        assert micro_batch(model, DIES, cache) == SINGLE
    (record,) = caplog.records
    assert "died of signal 4" in record.getMessage()
    assert "pip install --force-reinstall --no-cache-dir" in record.getMessage()
    # The verdict is kept: a second load neither runs the trial nor warns again.
    caplog.clear()
    assert micro_batch(model, ["false-program-that-is-never-run"], cache) == SINGLE
    assert not caplog.records
    assert list(json.loads(cache.read_text()).values()) == [SINGLE]


def test_a_trial_that_fails_for_another_reason_blames_nothing(tmp_path, caplog):
    """A file that is no model makes the child raise: the load reports that, not the batched kernels."""
    model, cache = tmp_path / "m.gguf", tmp_path / "cache.json"
    model.write_bytes(b"GGUF")
    with caplog.at_level(logging.WARNING):
        assert micro_batch(model, RAISES, cache) == BATCHED
    assert not caplog.records and not cache.exists()


def test_an_unwritable_cache_only_means_the_trial_runs_again(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    blocked = tmp_path / "file" / "cache.json"
    (tmp_path / "file").write_text("a file where the cache folder would be")
    assert micro_batch(model, DIES, blocked) == SINGLE


@pytest.mark.local
@pytest.mark.skipif(not local_available(), reason="the voices[local] extra is not installed")
def test_this_build_reads_the_packaged_model_in_batches(tmp_path):
    assert micro_batch(model_path("local:default"), cache=tmp_path / "cache.json") == BATCHED
