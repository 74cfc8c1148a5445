"""The local models compared: which packaged GGUF gives a dialogue worth watching, and how fast.

Each installed packaged model plays Ada and Basil (the personas of config/personas.toml, their model
swapped) through the real engine, several runs at random seeds. Per model:

- completion tokens per turn (mean), and tokens per second over the calls, prompt reading included;
- verbatim repeats (a turn equal to an earlier one of its dialogue, case and spacing aside) and near
  repeats (word-trigram Jaccard similarity of 0.5 or more, the loop detector's threshold);
- whether each persona keeps to its system prompt, by a simple stated check: Ada asks a question (her
  turn holds a "?"), Basil talks as a gardener (his turn holds a word from GARDEN);
- whether the runs differ from each other (sampling that samples);
- prompt reading: tokens per second reading a 400-token prompt with one token per micro-batch (what
  Voices did before) and with llama.cpp's default micro-batch (what it does now);
- install size: the model's package and what it brings that Voices does not already need.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import replace
from decimal import Decimal
from importlib import metadata
from pathlib import Path

from bench.harness import ROOT, engine, run_dialogue
from bot.loops import LoopThresholds, similarity
from bot.models import DialogueSpec, Limits, Turn
from bot.personas import load_personas
from bot.providers.local import PACKAGED, Packaged, local_available, model_path
from bot.providers.microbatch import BATCHED, SINGLE

OPENING = "Introduce yourself in two sentences, then ask the other a question you really wonder about."
GARDEN = re.compile(
    r"\b(garden\w*|season\w*|spring|summer|autumn|fall|winter|soil|seeds?|plant\w*|grow\w*|roots?|"
    r"bloom\w*|flowers?|harvest\w*|weeds?|compost|leaves|trees?)\b",
    re.IGNORECASE,
)


def measure_all(rounds: int, runs: int, quick: bool) -> list[Awaitable[dict[str, str]]]:
    """Return one measurement per packaged model."""
    return [measure(model, rounds, runs, quick) for model in PACKAGED.values()]


async def measure(model: Packaged, rounds: int, runs: int, quick: bool) -> dict[str, str]:
    """Run `runs` dialogues of `rounds` rounds between Ada and Basil on `model`; return its figures."""
    row = {"model": f"local:{model.name}"}
    if not local_available() or not model.installed():
        return row | {"install": f"not installed (pip install {model.distribution})"}
    model_id = f"local:{model.name}"
    library = load_personas(ROOT / "config" / "personas.toml")
    personas = tuple(replace(library[key], model=model_id) for key in ("ada", "basil"))
    dialogues: list[list[Turn]] = []
    with tempfile.TemporaryDirectory() as folder:
        async with engine(Path(folder), "http://127.0.0.1:9/api/v1") as app:
            for _ in range(runs):
                spec = DialogueSpec(personas, OPENING, Limits(rounds, Decimal(1)), origin="bench")
                dialogue = await app.runner.create(spec)  # loads the model once, before the clock
                await run_dialogue(app, dialogue.id)
                dialogues.append(await app.store.list_turns(dialogue.id))
    turns = [t for d in dialogues for t in d]
    tokens = sum(t.usage.completion_tokens for t in turns)
    in_calls = sum(t.latency_ms for t in turns) / 1000
    texts = [tuple(t.text for t in d) for d in dialogues]
    single, batched = await asyncio.to_thread(_prompt_speeds, model_path(model_id), 64 if quick else 400)
    return row | {
        "install": f"{_install_mb(model.distribution):.0f} MB",
        "tokens per turn": f"{tokens / len(turns):.1f}",
        "verbatim repeats": str(sum(_repeats(d, exact=True) for d in dialogues)),
        "near repeats": str(sum(_repeats(d, exact=False) for d in dialogues)),
        "Ada asks / Basil gardens": _kept(dialogues),
        "runs differ": str(len(set(texts)) == len(texts)) if runs > 1 else "(one run)",
        "tokens/s, prompt included": f"{tokens / in_calls:.1f}",
        "prompt tokens/s, ubatch 1 → 512": f"{single:.0f} → {batched:.0f}",
    }


def _repeats(turns: list[Turn], exact: bool) -> int:
    """Count turns that repeat an earlier turn of the same dialogue."""
    threshold = LoopThresholds().similarity
    count = 0
    for i, turn in enumerate(turns):
        mine = " ".join(turn.text.lower().split())
        earlier = [" ".join(t.text.lower().split()) for t in turns[:i]]
        if exact and mine in earlier or not exact and any(similarity(mine, e) >= threshold for e in earlier):
            count += 1
    return count


def _kept(dialogues: list[list[Turn]]) -> str:
    asks = [("?" in t.text) for d in dialogues for t in d if t.seat == 0]
    gardens = [bool(GARDEN.search(t.text)) for d in dialogues for t in d if t.seat == 1]
    return f"{sum(asks)}/{len(asks)} · {sum(gardens)}/{len(gardens)}"


def _prompt_speeds(path: Path, tokens: int) -> tuple[float, float]:
    """Return prompt tokens per second read one token per micro-batch, then in llama.cpp's default."""
    from llama_cpp import Llama

    speeds = []
    for ubatch in (SINGLE, BATCHED):
        threads = len(os.sched_getaffinity(0))
        llm = Llama(
            model_path=str(path),
            n_ctx=1024,
            n_ubatch=ubatch,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        prompt = llm.tokenize(b"The seasons turn and the garden answers them. " * 60)[:tokens]
        llm.eval(prompt[:8])  # the first call pays for warming up, which is no reading speed
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        speeds.append(len(prompt) / (time.perf_counter() - started))
        llm.close()
    return speeds[0], speeds[1]


def _install_mb(distribution: str) -> float:
    """Return the size of a distribution and of the packages it brings that voices[local] does not
    otherwise need."""
    others = _closure(["voices", "llama-cpp-python"], skip={distribution})
    mine = _closure([distribution]) - others
    return sum(_size(name) for name in mine) / 1e6


def _closure(names: list[str], skip: frozenset[str] | set[str] = frozenset()) -> set[str]:
    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for requirement in requires:
            if "extra ==" in requirement and "local" not in requirement and "server" not in requirement:
                continue
            todo.append(_canonical(re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]))
    return seen


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _size(name: str) -> int:
    distribution = metadata.distribution(name)
    total = 0
    for file in distribution.files or []:
        path = Path(str(distribution.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total
