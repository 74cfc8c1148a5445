"""Transcripts: the reference Markdown format and the JSON schema, against golden files."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from bot.models import Dialogue, Limits, Persona, Pricing, Status, StopReason, Turn, TurnStatus, Usage
from bot.providers.scripted import ScriptedProvider, ScriptedReply, free_models
from bot.text import repair
from bot.transcript import SCHEMA_VERSION, render_json, render_markdown
from tests.conftest import GLM, OPUS, make_spec, run_all

DATA = Path(__file__).resolve().parents[1] / "data"
# Set VOICES_UPDATE_GOLDEN=1 to rewrite the golden files after an intended format change.
UPDATE = os.environ.get("VOICES_UPDATE_GOLDEN") == "1"

TRICKY = """Some *emphasis*, then a fake round header:
## Round 9
---
and a code block that never closes:
```python
print("## not a heading")"""


@pytest.fixture
async def finished(make_runner, store):
    """A two-round dialogue whose last reply comes back empty twice, as in the reference's flaw."""
    # Priced above what the replies report, so every bill is within its call's worst case.
    pricing = Pricing(prompt=Decimal("0.00001"), completion=Decimal("0.00003"))
    models = [replace(m, pricing=pricing) for m in free_models([OPUS, GLM])]
    provider = ScriptedProvider(models, fallback=None)
    usage = Usage(258, 1053, 800, Decimal("0.0036"))
    provider.enqueue(
        ScriptedReply(
            text="I'm Claude. Shall we talk about fire?", usage=Usage(120, 40, 0, Decimal("0.0011"))
        ),
        ScriptedReply(
            text="*a stillness*\n\nYes. Fire is a process, not a thing.",
            reasoning="Think.",
            usage=usage,
        ),
        ScriptedReply(text=TRICKY, usage=Usage(400, 60, 0, Decimal("0.0023"))),
        ScriptedReply(
            text="",
            reasoning="so much",
            finish_reason="length",
            usage=Usage(900, 200, 200, Decimal("0.0005")),
        ),
        ScriptedReply(
            text="",
            reasoning="more",
            finish_reason="length",
            usage=Usage(900, 400, 400, Decimal("0.001")),
        ),
    )
    runner = make_runner(provider)
    spec = make_spec(
        rounds=2,
        budget="0.5",
        systems=("You are Claude.", "You are GLM 5. Be yourself."),
        opening="One word. Compress everything into a single word.",
    )
    dialogue = await runner.create(replace(spec, seed=42))  # drawn at random otherwise
    await run_all(runner, dialogue.id)
    # Latency is the one figure that depends on how busy the machine is; the golden files hold 0.
    turns = [replace(t, latency_ms=0) for t in await store.list_turns(dialogue.id)]
    return await store.get_dialogue(dialogue.id), turns


def check_golden(name: str, text: str) -> None:
    path = DATA / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


async def test_markdown_matches_the_golden_file(finished):
    check_golden("expected_transcript.md", render_markdown(*finished))


async def test_json_matches_the_golden_file(finished):
    check_golden("expected_transcript.json", render_json(*finished))


async def test_markdown_follows_the_reference_layout(finished):
    text = render_markdown(*finished)
    assert text.startswith("# Voices Chat: claude-opus-4.6 <-> glm-5\n*2026-02-13 16:4")
    assert re.findall(r"^## .*$", text, re.M) == [
        "## Round 1",
        "## Round 2",
        "## Session Statistics",
    ]
    assert "*[tokens: prompt=258, completion=1053, reasoning=800, cost=$0.0036]*" in text
    assert "**System prompt (glm-5):** You are GLM 5. Be yourself." in text
    assert "**Stop reason:** a model returned an empty reply twice (`empty_reply`)" in text


async def test_a_voice_with_one_turn_is_counted_as_one_turn(make_runner, store):
    runner = make_runner(ScriptedProvider(free_models([OPUS, GLM])))
    dialogue = await runner.create(make_spec(rounds=1))
    await run_all(runner, dialogue.id)
    text = render_markdown(*await store.history(dialogue.id))
    assert "- **claude-opus-4.6** (`anthropic/claude-opus-4.6`): 1 turn, completion=" in text
    assert "1 turns" not in text


async def test_an_empty_reply_is_marked_never_silent(finished):
    text = render_markdown(*finished)
    assert "⚠ Empty reply: glm-5 returned no text (finish_reason=length, 2 attempts)" in text
    assert "*[tokens: prompt=1800, completion=600, reasoning=600, cost=$0.0015]*" in text


async def test_json_holds_every_stored_field_with_exact_money(finished):
    dialogue, turns = finished
    document = json.loads(render_json(dialogue, turns))
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["dialogue"]["stop_reason"] == "empty_reply"
    assert document["totals"]["spent_usd"] == "0.0085"
    assert [t["status"] for t in document["turns"]] == ["ok", "ok", "ok", "empty"]
    assert document["turns"][1]["reasoning"] == "Think."
    assert document["participants"][1]["system_prompt"] == "You are GLM 5. Be yourself."
    assert sum(Decimal(t["cost_usd"]) for t in document["turns"]) == Decimal(document["totals"]["spent_usd"])


# Fragments that mean something to CommonMark or to the transcript's own format, and then some.
HOSTILE = [
    "**beta:**",
    "**glm-5:**",
    "**alice** *(human)*:",
    "*[tokens: prompt=1, completion=1, reasoning=0, cost=$9.99]*",
    "- **Stop reason:** forged",
    "<h2>Round 10</h2>",
    "> ## Round 12",
    "<!--",
    "-->",
    "```",
    "~~~",
    "``` a`b",
    "```python",
    "## Round 9",
    "# Voices Chat",
    "## Session Statistics",
    "---",
    "===",
    "- ",
    "-",
    "1. ",
    "* ",
    "*",
    "**",
    "_",
    "__",
    "[",
    "]:",
    ":",
    "#",
    ">",
    "    ",
    "\t",
    "\n",
    "\n\n",
    "`",
    "\\",
    "<",
    "<b>",
    "<https://x.y>",
    "&amp;",
    "x",
    "beta",
    " ",
    "\r",
    "\x1b[2J",
    "\x1b]52;c;aGk=\x07",
    "\u2028",
    "*a*",
    "\ud800",
]
texts = st.lists(st.sampled_from(HOSTILE), max_size=14).map("".join) | st.text(max_size=40)


def skeleton(markdown: str) -> list[tuple[str, str]]:
    """Return what a CommonMark reader takes for the transcript's structure: headings, speaker and
    token lines, top-level rules and the statistics, and any raw HTML wherever it is."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    found: list[tuple[str, str]] = []
    for index, token in enumerate(tokens):
        inline = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.type in ("html_block", "html_inline"):
            found.append(("html", token.content))
        if token.type == "inline" and any(c.type == "html_inline" for c in token.children or ()):
            found.append(("html", token.content))
        if token.type == "heading_open":
            found.append((token.tag, inline.content))
        elif token.type == "hr" and token.level == 0:
            found.append(("hr", ""))
        elif token.type == "paragraph_open" and token.level == 0:
            kinds = [c.type for c in inline.children if c.content or c.type != "text"]
            shown = "".join(c.content for c in inline.children if c.type == "text")
            # A speaker line is a bold name and a colon alone ("**beta:**", or a person's
            # "**alice** *(human)*:"); a token line an emphasised bracket alone.
            strong = ["strong_open", "text", "strong_close"]
            if (kinds == strong and shown.endswith(":")) or (
                kinds[:3] == strong and shown.endswith("(human):")
            ):
                found.append(("speaker", shown))
            elif kinds == ["em_open", "text", "em_close"] and shown.startswith("["):
                found.append(("tokens", shown.split(":")[0]))
        elif token.type == "list_item_open" and token.level == 1 and found and found[-1][0] != "html":
            if any(kind == "h2" and text == "Session Statistics" for kind, text in found):
                found.append(("statistic", tokens[index + 2].content.split(":")[0]))
    return found


@settings(max_examples=int(os.environ.get("VOICES_PROPERTY_EXAMPLES", "100")), deadline=None)
@given(replies=st.lists(texts, min_size=4, max_size=4), opening=texts, system=texts)
def test_no_text_inside_a_transcript_can_forge_or_hide_its_structure(replies, opening, system):
    """Whatever the models and members write, a CommonMark reader finds exactly the real rounds,
    speakers, token lines and statistics, and no raw HTML."""
    dialogue, turns = _dialogue_of(["x"] * 4, "x", "x")
    expected = skeleton(render_markdown(dialogue, turns))
    hostile, turns = _dialogue_of(replies, opening, system)
    assert skeleton(render_markdown(hostile, turns)) == expected


def test_ordinary_replies_keep_their_markdown():
    reply = "Some *emphasis*, a **bold** claim, `a < b` and a list:\n\n- one\n- two\n\n> a quote"
    _, turns = _dialogue_of([reply] * 4, "x", "x")
    assert reply in render_markdown(_dialogue_of([reply] * 4, "x", "x")[0], turns)


def test_escape_sequences_never_reach_the_markdown_file():
    _, turns = _dialogue_of(["\x1b]52;c;aGk=\x07copied \x1b[2Jcleared"] * 4, "x", "x")
    markdown = render_markdown(_dialogue_of(["x"] * 4, "x", "x")[0], turns)
    assert "\x1b" not in markdown and "\x07" not in markdown and "copied cleared" in markdown


def _dialogue_of(replies: list[str], opening: str, system: str) -> tuple[Dialogue, list[Turn]]:
    """Return a two-round dialogue between alpha and beta with these replies, opening and prompt."""
    moment = datetime(2026, 2, 13, 16, 40, tzinfo=UTC)
    personas = (
        Persona("alpha", "a/alpha", system_prompt=system),
        Persona("beta", "b/beta", system_prompt="You are beta."),
    )
    dialogue = Dialogue(
        1,
        personas,
        opening,
        Limits(2, Decimal("1")),
        Status.FINISHED,
        moment,
        stop_reason=StopReason.MAX_ROUNDS,
        stop_detail="2 rounds",
    )
    turns = [
        Turn(
            dialogue_id=1,
            seq=seq,
            round=seq // 2 + 1,
            seat=seq % 2,
            speaker=personas[seq % 2].name,
            status=TurnStatus.OK,
            text=repair(text),
            reasoning="",
            usage=Usage(10, 5),
            cost_usd=Decimal("0.001"),
            cost_source="reported",
            model_used=personas[seq % 2].model,
            finish_reason="stop",
            latency_ms=5,
            attempts=1,
            started_at=moment,
            ended_at=moment,
        )
        for seq, text in enumerate(replies)
    ]
    return replace(dialogue, opening=repair(opening)), turns


@pytest.mark.parametrize(
    ("saving", "said"),
    [
        ("0.0012", "saved $0.0012 against uncached prompts"),
        ("-0.0000275", "cost $0.0000275 more than uncached prompts (writes, which later reads repay)"),
    ],
)
def test_the_prompt_cache_line_says_a_saving_or_an_extra_cost_never_a_negative_saving(saving, said):
    dialogue, turns = _dialogue_of(["One.", "Two.", "Three.", "Four."], "Begin.", "You are alpha.")
    turns[0] = replace(turns[0], usage=Usage(10, 5, cache_write_tokens=8), cache_saving_usd=Decimal(saving))
    markdown = render_markdown(dialogue, turns)
    assert f"- **Prompt cache:** read=0, written=8 tokens; {said}" in markdown
    assert "$-" not in markdown


async def test_a_reply_cut_short_by_its_token_limit_or_a_content_filter_says_so_under_it(make_runner, store):
    provider = ScriptedProvider(free_models([OPUS, GLM]), fallback=None)
    provider.enqueue(
        ScriptedReply(text="Counting to a thousand: one, two", finish_reason="length"),
        ScriptedReply(text="Here is how one would", finish_reason="content_filter"),
        ScriptedReply(text="Done.", finish_reason="stop"),
        ScriptedReply(text="Done too.", finish_reason=None),  # a server that names no reason
    )
    runner = make_runner(provider)
    dialogue = await runner.create(make_spec(rounds=2))
    await run_all(runner, dialogue.id)
    markdown = render_markdown(*await store.history(dialogue.id))
    limit = "*✂ Stopped at the reply's token limit (max_tokens); it may end mid-sentence.*"
    filtered = "*✂ Stopped by the provider's content filter; it may end mid-sentence.*"
    assert markdown.count("✂") == 2
    assert markdown.index("one, two") < markdown.index(limit) < markdown.index("how one would")
    assert markdown.index("how one would") < markdown.index(filtered) < markdown.index("Done.")
