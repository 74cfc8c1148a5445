"""A picture of a dialogue, as PNG bytes: tokens per turn by speaker, and spend against the budget.

Drawn with Pillow (one wheel, no dependencies of its own) rather than matplotlib, which with numpy
weighs ten times as much for two panels of bars and lines. The picture is drawn at twice its size
and scaled down, which smooths its lines and letters; it is read at Discord's preview width
(about 550 px), so the type is large. The palette is Okabe and Ito's, safe for colour-blind eyes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from PIL import Image, ImageDraw, ImageFont

from bot.budget import format_usd
from bot.models import Dialogue, Note, NoteKind, Turn
from bot.text import counted

WIDTH, HEIGHT = 900, 560
SCALE = 2  # drawn at this multiple, then scaled down: anti-aliasing for lines and type

#: Okabe–Ito: blue, orange, bluish green, reddish purple, sky blue, yellow (vermillion is the budget).
SPEAKERS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442")
BUDGET = "#D55E00"
INK, MUTED, GRID, PAPER = "#222222", "#666666", "#DDDDDD", "#FFFFFF"


_Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class _Box:
    left: float
    top: float
    right: float
    bottom: float

    def x(self, value: float, span: float) -> float:
        return self.left + (self.right - self.left) * (value / span if span else 0)

    def y(self, value: float, span: float) -> float:
        return self.bottom - (self.bottom - self.top) * (value / span if span else 0)


def render_png(dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note] = ()) -> bytes:
    """Return the picture of the dialogue as PNG bytes."""
    image = Image.new("RGB", (WIDTH * SCALE, HEIGHT * SCALE), PAPER)
    draw = ImageDraw.Draw(image)
    pen = _Pen(draw)
    names = " vs ".join(p.name for p in dialogue.participants)
    pen.text((20, 16), f"Dialogue {dialogue.id}: {names}", 28, INK)
    spent = f"{format_usd(dialogue.totals.spent_usd)} spent of {format_usd(dialogue.limits.budget_usd)}"
    pen.text((20, 52), f"{counted(len(turns), 'turn')} · {spent}", 20, MUTED)
    below = _legend(pen, dialogue, notes, 20, 82)
    count = max(len(turns), 1)
    middle = (below + 56 + HEIGHT - 60) / 2
    tokens = _Box(100, below + 56, WIDTH - 24, middle - 20)
    money = _Box(100, middle + 44, WIDTH - 24, HEIGHT - 60)
    _token_panel(pen, tokens, turns, count)
    _cost_panel(pen, money, dialogue, turns, notes, count)
    _marks(pen, (tokens, money), notes, count)
    _turn_axis(pen, money, count)
    small = image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, format="PNG")
    return out.getvalue()


class _Pen:
    """Draws in final-size coordinates on the doubled canvas, with cached fonts."""

    def __init__(self, draw: ImageDraw.ImageDraw):
        self.draw = draw
        self._fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}

    def font(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if size not in self._fonts:
            self._fonts[size] = ImageFont.load_default(size=size * SCALE)
        return self._fonts[size]

    def text(self, at: tuple[float, float], text: str, size: int, fill: str, anchor: str = "la") -> float:
        """Write text; return its width in final-size pixels."""
        font = self.font(size)
        self.draw.text((at[0] * SCALE, at[1] * SCALE), text, font=font, fill=fill, anchor=anchor)
        return self.draw.textlength(text, font=font) / SCALE

    def width(self, text: str, size: int) -> float:
        return self.draw.textlength(text, font=self.font(size)) / SCALE

    def line(self, points: Sequence[tuple[float, float]], fill: str, width: float = 1) -> None:
        scaled = [(x * SCALE, y * SCALE) for x, y in points]
        self.draw.line(scaled, fill=fill, width=max(1, round(width * SCALE)), joint="curve")

    def dashed(self, start: _Point, end: _Point, fill: str, width: float = 1) -> None:
        length = math.dist(start, end)
        steps = max(1, int(length // 12))
        for step in range(steps):
            a, b = step / steps, min(1.0, (step + 0.55) / steps)
            self.line(
                [
                    (start[0] + (end[0] - start[0]) * a, start[1] + (end[1] - start[1]) * a),
                    (start[0] + (end[0] - start[0]) * b, start[1] + (end[1] - start[1]) * b),
                ],
                fill,
                width,
            )

    def rect(self, box: tuple[float, float, float, float], fill: str) -> None:
        self.draw.rectangle(tuple(v * SCALE for v in box), fill=fill)

    def diamond(self, x: float, y: float, fill: str) -> None:
        points = [(x, y - 9), (x + 8, y), (x, y + 9), (x - 8, y)]
        self.draw.polygon([(px * SCALE, py * SCALE) for px, py in points], fill=fill)

    def triangle(self, x: float, y: float, fill: str) -> None:
        points = [(x - 7, y - 12), (x + 7, y - 12), (x, y)]
        self.draw.polygon([(px * SCALE, py * SCALE) for px, py in points], fill=fill)


def _legend(pen: _Pen, dialogue: Dialogue, notes: Sequence[Note], left: float, top: float) -> float:
    """Draw the key, wrapping onto more rows as needed; return where it ends."""
    entries: list[tuple[str, str, str]] = [
        ("box", SPEAKERS[seat % len(SPEAKERS)], persona.name)
        for seat, persona in enumerate(dialogue.participants)
    ]
    entries.append(("box", "#BBBBBB", "reasoning (lighter)"))
    if any(n.kind is NoteKind.INTERJECTION for n in notes):
        entries.append(("triangle", INK, "interjection"))
    if any(n.kind.is_context for n in notes):
        entries.append(("dashes", MUTED, "compaction"))
    if any(n.kind is NoteKind.VERDICT for n in notes):
        entries.append(("diamond", INK, "referee's verdict"))
    x, y = left, top
    for shape, colour, label in entries:
        width = 22 + pen.width(label, 20)
        if x + width > WIDTH - 20 and x > left:
            x, y = left, y + 28
        if shape == "box":
            pen.rect((x, y + 3, x + 16, y + 19), colour)
        elif shape == "triangle":
            pen.triangle(x + 8, y + 19, colour)
        elif shape == "dashes":
            pen.dashed((x + 8, y - 2), (x + 8, y + 24), colour, 2)
        else:
            pen.diamond(x + 8, y + 11, colour)
        pen.text((x + 22, y), label, 20, INK if shape == "box" else MUTED)
        x += width + 16
    return y + 24


def _token_panel(pen: _Pen, box: _Box, turns: Sequence[Turn], count: int) -> None:
    pen.text((10, box.top - 44), "Tokens per turn", 20, INK)
    heights = [t.usage.completion_tokens + t.usage.reasoning_tokens for t in turns]
    top, step = _scale(max(heights, default=0))
    _grid(pen, box, top, step, lambda v: f"{v:,.0f}")
    slot = (box.right - box.left) / count
    width = max(1.0, min(slot * 0.7, 60))
    for index, turn in enumerate(turns):
        colour = SPEAKERS[turn.seat % len(SPEAKERS)]
        middle = box.left + slot * (index + 0.5)
        completion, reasoning = turn.usage.completion_tokens, turn.usage.reasoning_tokens
        left, right, base = middle - width / 2, middle + width / 2, box.y(completion, top)
        if completion:
            pen.rect((left, base, right, box.bottom), colour)
        if reasoning:
            pen.rect((left, box.y(completion + reasoning, top), right, base), _light(colour))


def _cost_panel(
    pen: _Pen, box: _Box, dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note], count: int
) -> None:
    pen.text((10, box.top - 40), "Spent so far, against the budget", 20, INK)
    budget = dialogue.limits.budget_usd
    spent, saved = _cumulative(turns, notes, count)
    without = [s + v for s, v in zip(spent, saved, strict=True)]
    # Headroom over the budget line, for its label to sit inside the panel, under the title line.
    top, step = _scale(float(max([budget, *without])) * 1.08)
    _grid(pen, box, top, step, lambda v: format_usd(Decimal(str(v))))
    level = box.y(float(budget), top)
    pen.dashed((box.left, level), (box.right, level), BUDGET, 2.5)
    pen.text((box.right - 4, level - 6), f"budget {format_usd(budget)}", 18, BUDGET, anchor="rb")
    if any(saved):
        points = [(box.x(i, count), box.y(float(v), top)) for i, v in enumerate(without)]
        for a, b in zip(points, points[1:], strict=False):
            pen.dashed(a, b, MUTED, 2)
        # On the panel's title line: inside the plot it sat on the budget line.
        pen.text((box.right - 4, box.top - 38), "- - without the prompt cache", 18, MUTED, anchor="ra")
    points = [(box.x(i, count), box.y(float(v), top)) for i, v in enumerate(spent)]
    pen.line(points, INK, 3)


def _cumulative(
    turns: Sequence[Turn], notes: Sequence[Note], count: int
) -> tuple[list[Decimal], list[Decimal]]:
    """Return the spend and the cache saving after each turn boundary 0..count (notes' calls, such as
    summaries and verdicts, counted where they happened; carried-over turns were paid elsewhere)."""
    carried = sum(1 for t in turns if t.inherited)
    spent, saved = [Decimal(0)] * (count + 1), [Decimal(0)] * (count + 1)
    for turn in turns:
        if not turn.inherited:
            for at in range(turn.seq + 1, count + 1):
                spent[at] += turn.cost_usd
                saved[at] += turn.cache_saving_usd
    for note in notes:
        if note.cost_usd and note.before_seq >= carried:
            for at in range(min(note.before_seq, count), count + 1):
                spent[at] += note.cost_usd
    return spent, saved


def _marks(pen: _Pen, panels: tuple[_Box, _Box], notes: Sequence[Note], count: int) -> None:
    tokens, money = panels
    for note in notes:
        x = tokens.x(min(note.before_seq, count), count)
        if note.kind is NoteKind.INTERJECTION:
            pen.triangle(x, tokens.top, INK)
        elif note.kind.is_context:
            pen.dashed((x, tokens.top), (x, money.bottom), MUTED, 2)
        elif note.kind is NoteKind.VERDICT:
            pen.diamond(x, tokens.top - 12, INK)


def _turn_axis(pen: _Pen, box: _Box, count: int) -> None:
    step = max(1, int(_nice_top(count / 10)))
    for turn in range(step, count + 1, step):
        x = box.left + (box.right - box.left) * (turn - 0.5) / count
        pen.text((x, box.bottom + 8), str(turn), 18, MUTED, anchor="ma")
    pen.text(((box.left + box.right) / 2, box.bottom + 32), "turn", 18, MUTED, anchor="ma")


def _grid(pen: _Pen, box: _Box, top: float, step: float, label: Callable[[float], str]) -> None:
    for index in range(round(top / step) + 1):
        value = step * index
        y = box.y(value, top)
        pen.line([(box.left, y), (box.right, y)], GRID if index else MUTED, 1)
        pen.text((box.left - 10, y), label(value), 18, MUTED, anchor="rm")


def _scale(highest: float) -> tuple[float, float]:
    """Return the top of an axis and its step: a round step, and about four of them."""
    step = _nice_top(highest / 4)
    return max(step, math.ceil(highest / step - 1e-9) * step), step


def _nice_top(value: float) -> float:
    """Return a round number at or above value (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * power:
            return factor * power
    return 10 * power


def _light(colour: str) -> str:
    """Return the colour mixed halfway with white: the same hue, read as its lighter part."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{(c + 255) // 2:02X}" for c in (red, green, blue))
