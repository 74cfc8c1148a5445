"""Transcripts rendered from the store: Markdown for people, JSON (with a schema version) for machines.

Pure functions returning str; front ends decide where the text goes (a file, a Discord attachment).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from bot.budget import format_usd
from bot.markdown import escape_block
from bot.models import Dialogue, LineageKind, Note, NoteKind, Tally, Turn, TurnStatus, Usage, plain
from bot.text import counted

# 2: prompt-cache tokens and savings, the context and loop policies, notes between turns (compactions,
# loops, interjections, memories), human seats, and continuations and forks (parent, children).
SCHEMA_VERSION = 2

_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def render_markdown(dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note] = ()) -> str:
    """Return the transcript in the reference format: header, rounds with token lines, statistics.

    Notes (a compaction, a loop noticed) appear in their place, before the turn they preceded.
    """
    names = [_inline(p.name) for p in dialogue.participants]
    lines = [f"# Voices Chat: {' <-> '.join(names)}", f"*{_when(dialogue.created_at)}*", ""]
    for name, persona in zip(names, dialogue.participants, strict=True):
        model = "a person (human seat)" if persona.is_human else f"`{persona.model}`"
        lines.append(f"**Model ({name}):** {model}  ")
    if dialogue.referee is not None:
        referee = dialogue.referee
        lines.append(f"**Referee:** {_inline(referee.name)} (`{referee.model}`){_every(dialogue)}  ")
    lines += _lineage(dialogue)
    lines += [
        f"**Rounds:** {_rounds_completed(dialogue, turns)} of {dialogue.limits.max_rounds}  ",
        f"**Total cost:** {format_usd(dialogue.totals.spent_usd)} "
        f"(budget {format_usd(dialogue.limits.budget_usd)})  ",
    ]
    for name, persona in zip(names, dialogue.participants, strict=True):
        if persona.system_prompt:
            lines.append(f"**System prompt ({name}):** {_inline(persona.system_prompt)}  ")
    for note in notes:
        if note.kind is NoteKind.MEMORY:
            lines += ["", f"*{_inline(headline(note))}*", "", *_quote(note.text)]
    lines += ["", "**Opening:**", *_quote(dialogue.opening), "", "---", ""]
    in_place = [n for n in notes if n.kind is not NoteKind.MEMORY]
    current_round = 0
    for turn in turns:
        if turn.round != current_round:
            if current_round:
                lines += ["---", ""]
            current_round = turn.round
            lines += [f"## Round {turn.round}", ""]
        if turn.seq == 0 and turn.inherited and dialogue.parent:
            lines += [f"*Carried over from dialogue {dialogue.parent.parent_id}:*", ""]
        elif turn.seq and not turn.inherited and turns[turn.seq - 1].inherited:
            lines += ["*New in this dialogue:*", ""]
        for note in in_place:
            if note.before_seq == turn.seq:
                lines += _note_block(note)
        lines += _turn_block(turn, names[turn.seat])
    for note in in_place:
        if note.before_seq >= len(turns):
            lines += _note_block(note)
    if current_round:
        lines += ["---", ""]
    lines += _statistics(dialogue, turns, names, notes)
    return "\n".join(lines) + "\n"


def _lineage(dialogue: Dialogue) -> list[str]:
    lines = []
    parent = dialogue.parent
    if parent is not None and parent.kind is LineageKind.FORK:
        lines.append(f"**Forked from:** dialogue {parent.parent_id} at turn {parent.turns}  ")
    elif parent is not None:
        carried = f"turns 1–{parent.turns} carried over" if parent.turns else "remembered in summary"
        lines.append(f"**Continues:** dialogue {parent.parent_id} ({carried})  ")
    for kind, label in ((LineageKind.CONTINUE, "Continued in"), (LineageKind.FORK, "Forked into")):
        ids = [str(child.id) for child in dialogue.children if child.kind is kind]
        if ids:
            lines.append(f"**{label}:** dialogue {', '.join(ids)}  ")
    return lines


def _turn_block(turn: Turn, name: str) -> list[str]:
    if turn.is_human:
        return [
            f"**{name}** *(human)*:",
            "",
            escape_block(turn.text),
            "",
            "*[written by a person: no tokens, no cost]*",
            "",
        ]
    lines = [f"**{name}:**", ""]
    if turn.text:
        lines += [escape_block(turn.text), ""]
    if turn.status is TurnStatus.EMPTY:
        lines += [
            f"*⚠ Empty reply: {name} returned no text (finish_reason={turn.finish_reason}, "
            f"{turn.attempts} attempt{'s' if turn.attempts != 1 else ''}). "
            "Nothing was passed on to the other side.*",
            "",
        ]
    elif turn.status is TurnStatus.CANCELLED:
        charged = (
            f"the provider billed what was written ({format_usd(turn.cost_usd)})"
            if turn.cost_source == "reported"
            else f"it was charged at its worst case ({format_usd(turn.cost_usd)})"
        )
        # A stop, the time limit, the reply cap or a connection lost for good: the dialogue's end
        # says which, so the line names none of them.
        lines += [f"*✂ Cut off before the reply finished; {charged}.*", ""]
    elif why := turn.cut_short:
        lines += [f"*✂ {why}*", ""]
    usage = turn.usage
    cache = ""
    if usage.cached_tokens or usage.cache_write_tokens:
        cache = f", cached={usage.cached_tokens}, cache_write={usage.cache_write_tokens}"
    about = "~" if usage.estimated else ""  # the server reported no usage: counted here instead
    lines += [
        f"*[tokens: prompt={about}{usage.prompt_tokens}{cache}, completion={about}{usage.completion_tokens}, "
        f"reasoning={about}{usage.reasoning_tokens}, cost={format_usd(turn.cost_usd)}]*",
        "",
    ]
    return lines


def headline(note: Note) -> str:
    """Return a note in one line of plain text, as the thread and the terminal show it."""
    if note.kind is NoteKind.COMPACTED:
        return (
            f"⟲ Context compacted: the first {counted(note.first_kept_seq or 0, 'turn')} are now a "
            f"summary by {note.model} (cost {format_usd(note.cost_usd)}); the models see it instead"
        )
    if note.kind is NoteKind.TRUNCATED:
        return f"✂ Context truncated: {note.text}"
    if note.kind is NoteKind.INTERJECTION:
        return f"💬 {note.author} interjects: {note.text}"
    if note.kind is NoteKind.MEMORY:
        return (
            f"🧠 Remembered from an earlier dialogue, in a summary by {note.model} "
            f"(cost {format_usd(note.cost_usd)}), given to every participant"
        )
    if note.kind is NoteKind.BILLING:
        return f"⚠ Bill: {note.text}"
    if note.kind is NoteKind.VERDICT:
        return f"⚖ {note.author}'s verdict ({note.model}, cost {format_usd(note.cost_usd)})"
    if note.kind is NoteKind.NO_VERDICT:
        return f"⚖ {note.author} gave no verdict: {note.text}"
    return f"🔁 Going in circles ({note.kind}): {note.text}"


def _note_block(note: Note) -> list[str]:
    if note.kind is NoteKind.INTERJECTION:
        return [f"> **{_inline(note.author or '?')}** *(interjection)*: {_inline(note.text)}", ""]
    lines = [f"*{_inline(headline(note))}*", ""]
    if note.kind in (NoteKind.COMPACTED, NoteKind.VERDICT):
        lines += [*_quote(note.text), ""]
    return lines


def _every(dialogue: Dialogue) -> str:
    every = dialogue.referee_every
    return (
        f", every {every} rounds and at the end"
        if every and every > 1
        else (", after every round" if every == 1 else ", at the end")
    )


def _statistics(
    dialogue: Dialogue, turns: Sequence[Turn], names: list[str], notes: Sequence[Note]
) -> list[str]:
    totals = dialogue.totals
    reason = dialogue.stop_reason
    ended = f"{reason.describe} (`{reason}`)" if reason else f"not ended ({dialogue.status})"
    if dialogue.stop_detail:
        ended += f": {_inline(dialogue.stop_detail)}"
    carried = sum(1 for t in turns if t.inherited)
    lines = [
        "## Session Statistics",
        "",
        f"- **Rounds completed:** {_rounds_completed(dialogue, turns)} of {dialogue.limits.max_rounds}",
        f"- **Turns:** {len(turns) - carried}" + (f" (and {carried} carried over)" if carried else ""),
        f"- **Total cost:** {format_usd(totals.spent_usd)} of "
        f"{format_usd(dialogue.limits.budget_usd)} budget",
        f"- **Tokens:** prompt={totals.prompt_tokens}, completion={totals.completion_tokens}, "
        f"reasoning={totals.reasoning_tokens}",
    ]
    tally = Tally.of(turns)
    for seat, name in enumerate(names):
        mine = [t for t in turns if t.seat == seat and not t.inherited]
        cost = sum((t.cost_usd for t in mine), start=Decimal(0))
        tokens = tally.seats.get(seat, Usage())
        lines.append(
            f"- **{name}** (`{dialogue.participants[seat].model}`): {counted(len(mine), 'turn')}, "
            f"completion={tokens.completion_tokens}, reasoning={tokens.reasoning_tokens}, "
            f"cost={format_usd(cost)}"
        )
    if tally.cached or tally.written:
        effect = cache_effect(tally.saved)
        lines.append(f"- **Prompt cache:** read={tally.cached}, written={tally.written} tokens; {effect}")
    # Notes carried over with the parent's turns happened (and were paid for) there.
    carried = dialogue.parent.turns if dialogue.parent else 0
    notes = [n for n in notes if n.before_seq >= carried]
    compactions = [n for n in notes if n.kind is NoteKind.COMPACTED]
    truncations = [n for n in notes if n.kind is NoteKind.TRUNCATED]
    if compactions or truncations:
        cost = sum((n.cost_usd for n in notes if n.kind.is_context), start=Decimal(0))
        lines.append(
            f"- **Context:** {len(compactions)} compactions, {len(truncations)} truncations "
            f"(summaries cost {format_usd(cost)})"
        )
    judged = [n for n in notes if n.kind in (NoteKind.VERDICT, NoteKind.NO_VERDICT)]
    if dialogue.referee is not None:
        verdicts = sum(1 for n in judged if n.kind is NoteKind.VERDICT)
        cost = sum((n.cost_usd for n in judged), start=Decimal(0))
        lines.append(
            f"- **Referee** {_inline(dialogue.referee.name)} (`{dialogue.referee.model}`): "
            f"{counted(verdicts, 'verdict')}, {len(judged) - verdicts} missed, cost={format_usd(cost)}"
        )
    said = [n for n in notes if n.kind is NoteKind.INTERJECTION]
    if said:
        lines.append(f"- **Interjections:** {len(said)}")
    loops = [n for n in notes if n.kind.is_loop]
    if loops:
        lines.append(f"- **Loops noticed:** {', '.join(str(n.kind) for n in loops)}")
    if totals.interrupted_calls:
        lines.append(
            f"- **Interrupted calls:** {totals.interrupted_calls} (lost in a crash or a stop: charged what "
            "the provider billed, or else their worst case)"
        )
    if dialogue.vote is not None:
        vote = dialogue.vote
        lines.append(f"- **Audience vote:** {_inline(vote.question)} {_inline(vote.result)}")
    lines += [
        f"- **Stop reason:** {ended}",
        f"- **Date:** {_when(dialogue.created_at)}",
        f"- **Dialogue:** {dialogue.id}",
    ]
    return lines


def cache_effect(saved: Decimal) -> str:
    """Say what the prompt cache did to the bill. Writing it costs more than a plain prompt, so a
    dialogue that wrote more than it read paid extra: said so, not as a negative saving."""
    if saved < 0:
        return f"cost {format_usd(-saved)} more than uncached prompts (writes, which later reads repay)"
    return f"saved {format_usd(saved)} against uncached prompts"


def render_json(dialogue: Dialogue, turns: Sequence[Turn], notes: Sequence[Note] = ()) -> str:
    """Return every stored field as JSON; money is a decimal string so no digit is lost."""
    limits = dialogue.limits
    totals = dialogue.totals
    tally = Tally.of(turns)
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dialogue": {
            "id": dialogue.id,
            "status": str(dialogue.status),
            "stop_reason": str(dialogue.stop_reason) if dialogue.stop_reason else None,
            "stop_detail": dialogue.stop_detail,
            "origin": dialogue.origin,
            "created_at": _iso(dialogue.created_at),
            "started_at": _iso(dialogue.started_at),
            "ended_at": _iso(dialogue.ended_at),
            "opening": dialogue.opening,
            "limits": {
                "max_rounds": limits.max_rounds,
                "budget_usd": plain(limits.budget_usd),
                "max_total_tokens": limits.max_total_tokens,
                "max_seconds": limits.max_seconds,
            },
            "context_policy": str(dialogue.context_policy),
            "loop_action": str(dialogue.loop_action),
            "summary_model": dialogue.summary_model,
            "parent": {
                "id": dialogue.parent.parent_id,
                "kind": str(dialogue.parent.kind),
                "turns": dialogue.parent.turns,
            }
            if dialogue.parent
            else None,
            "children": [child.id for child in dialogue.children],
            "continued_in": [c.id for c in dialogue.children if c.kind is LineageKind.CONTINUE],
            "forked_into": [c.id for c in dialogue.children if c.kind is LineageKind.FORK],
            "seed": dialogue.seed,
        },
        "participants": [
            {
                "seat": seat,
                "name": p.name,
                "model": p.model,
                "system_prompt": p.system_prompt,
                "temperature": p.temperature,
                "max_tokens": p.max_tokens,
                "reasoning_effort": p.reasoning_effort,
                "avatar_url": p.avatar_url,
                "human": p.is_human,
            }
            for seat, p in enumerate(dialogue.participants)
        ],
        "referee": _referee_json(dialogue),
        "audience_vote": _vote_json(dialogue),
        "turns": [_turn_json(t) for t in turns],
        "notes": [n.record() for n in notes],
        "totals": {
            "spent_usd": plain(totals.spent_usd),
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "reasoning_tokens": totals.reasoning_tokens,
            "interrupted_calls": totals.interrupted_calls,
            "cached_tokens": tally.cached,
            "cache_write_tokens": tally.written,
            "cache_saving_usd": plain(tally.saved),
            "rounds_completed": _rounds_completed(dialogue, turns),
            "turns": len(turns),
        },
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def _referee_json(dialogue: Dialogue) -> dict[str, Any] | None:
    referee = dialogue.referee
    if referee is None:
        return None
    return {
        "name": referee.name,
        "model": referee.model,
        "system_prompt": referee.system_prompt,
        "max_tokens": referee.max_tokens,
        "every_rounds": dialogue.referee_every,
    }


def _vote_json(dialogue: Dialogue) -> dict[str, Any] | None:
    vote = dialogue.vote
    if vote is None:
        return None
    counts = vote.counts or (None,) * len(vote.answers)
    return {
        "question": vote.question,
        "answers": [{"answer": a, "votes": n} for a, n in zip(vote.answers, counts, strict=True)],
        "opened_at": _iso(vote.opened_at),
        "closes_at": _iso(vote.closes_at),
        "closed_at": _iso(vote.closed_at),
    }


def _turn_json(turn: Turn) -> dict[str, Any]:
    record = turn.record()
    del record["dialogue_id"]
    return {**record, "speaker": turn.speaker}


def _quote(text: str) -> list[str]:
    return [f"> {line}".rstrip() for line in escape_block(text).split("\n")] or [">"]


def _inline(text: str) -> str:
    """Return text for one Markdown line: newlines folded, emphasis and headings neutralised."""
    return _INLINE_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _rounds_completed(dialogue: Dialogue, turns: Sequence[Turn]) -> int:
    count = len(dialogue.participants)
    answered: dict[int, int] = {}
    for turn in turns:
        if turn.status is TurnStatus.OK:
            answered[turn.round] = answered.get(turn.round, 0) + 1
    return sum(1 for n in answered.values() if n == count)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
