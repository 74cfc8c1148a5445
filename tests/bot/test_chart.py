"""The picture of a dialogue: a real PNG, each speaker in its own colour, the budget line drawn,
and no dialogue (empty, huge, oddly named) that fails to draw."""

from __future__ import annotations

import io
from dataclasses import replace
from decimal import Decimal

from PIL import Image

from bot.chart import BUDGET, HEIGHT, SPEAKERS, WIDTH, render_png
from bot.models import Persona
from tests.conftest import GLM, OPUS, make_spec, run_all


def colours(png: bytes) -> set[tuple[int, int, int]]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    return {colour for _, colour in image.convert("RGB").getcolors(WIDTH * HEIGHT)}


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


async def test_a_finished_dialogue_draws_each_speaker_and_the_budget(runner, server, store):
    dialogue = await runner.create(make_spec(OPUS, GLM, OPUS, rounds=3))
    await run_all(runner, dialogue.id)
    seen = colours(render_png(*await store.history(dialogue.id)))
    # Three seats: the first three colours of the palette fill their bars; the budget line its own.
    for colour in (*SPEAKERS[:3], BUDGET):
        assert rgb(colour) in seen
    assert rgb(SPEAKERS[3]) not in seen


async def test_a_dialogue_without_turns_and_one_with_odd_names_still_draw(runner, store):
    spec = make_spec(rounds=1)
    odd = (
        Persona("🦜" * 40 + " <@everyone>", OPUS, max_tokens=200),
        Persona("名前" * 30, GLM, max_tokens=200),
    )
    dialogue = await runner.create(replace(spec, participants=odd))
    png = render_png(*await store.history(dialogue.id))
    assert rgb(BUDGET) in colours(png)


async def test_the_cost_panel_scales_to_a_dialogue_that_passed_its_budget_line(runner, server, store):
    dialogue = await runner.create(make_spec(rounds=2, budget="0.05"))
    await run_all(runner, dialogue.id)
    history = await store.history(dialogue.id)
    # A provider billed above the budget (the one way spend can pass it): the line still fits.
    over = replace(history[0], totals=replace(history[0].totals, spent_usd=Decimal("0.2")))
    turns = [replace(t, cost_usd=Decimal("0.05")) for t in history[1]]
    assert rgb(BUDGET) in colours(render_png(over, turns, history[2]))


async def test_the_prompt_cache_legend_stays_clear_of_the_budget_line(runner, server, store):
    """Spend far under the budget puts the budget line at the top of the cost panel, where the
    legend of the line without the cache used to be written across it."""
    dialogue = await runner.create(make_spec(OPUS, GLM, rounds=3, budget="1"))
    await run_all(runner, dialogue.id)
    history = await store.history(dialogue.id)
    assert sum(t.usage.cached_tokens for t in history[1]) > 0  # the legend is drawn
    image = Image.open(io.BytesIO(render_png(*history))).convert("RGB")
    left, right = 100, WIDTH - 24  # the plot's edges
    line = max(
        range(HEIGHT // 2, HEIGHT),
        key=lambda y: sum(image.getpixel((x, y)) == rgb(BUDGET) for x in range(left, right)),
    )

    def dark_grey(colour: tuple[int, int, int]) -> bool:
        return max(colour) < 0x90 and max(colour) - min(colour) < 12

    near = [
        (x, y)
        for y in range(line - 12, line + 12)
        for x in range(left, right)
        if dark_grey(image.getpixel((x, y)))
    ]
    assert near == []
