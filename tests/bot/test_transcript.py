"""Transcripts: the reference Markdown format and the JSON schema, against golden files."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.models import Pricing, Usage
from bot.providers.scripted import ScriptedProvider, ScriptedReply, free_models
from bot.transcript import SCHEMA_VERSION, escape_block, render_json, render_markdown
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
    dialogue = await runner.create(spec)
    await run_all(runner, dialogue.id)
    return await store.get_dialogue(dialogue.id), await store.list_turns(dialogue.id)


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


FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
STRUCTURE = re.compile(r"^ {0,3}(#{1,6}(\s|$)|([-*_=])[ \t]*(\3[ \t]*){2,}$|=+[ \t]*$|-+[ \t]*$)")


@given(
    st.lists(
        st.sampled_from(
            [
                "## Round 2",
                "---",
                "```",
                "~~~~",
                "text",
                "# x",
                "***",
                "===",
                "  ## indented",
                "```py",
                "- item",
                "",
                "`inline`",
            ]
        ),
        max_size=12,
    )
)
def test_model_text_cannot_break_the_structure(lines):
    escaped = escape_block("\n".join(lines))
    fence = None
    for line in escaped.splitlines():
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
        elif match:
            fence = match.group(1)
        else:
            assert not STRUCTURE.match(line), line
    assert fence is None
