"""Dialogues that come from earlier ones: a continuation, which remembers a finished dialogue (its
whole history when that fits every model, else a summary in each persona's system prompt), and a
fork, which carries an earlier dialogue's turns up to any one of them and goes on from there."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from bot.budget import Budget, count_bytes, expected_tokens
from bot.control import Control
from bot.dialogue import DialogueRunner, carried_rounds
from bot.errors import InputError, ProviderError, StateError
from bot.models import (
    Dialogue,
    DialogueSpec,
    Limits,
    Lineage,
    LineageKind,
    Note,
    NoteKind,
    StopReason,
    Turn,
)
from bot.plan import Halted, max_tokens_of, tokens_left, tokens_per_byte
from bot.prompts import Window, build_messages, current_window
from bot.summary import summary_messages, summary_writer
from bot.text import counted

CONTINUE_OPENING = "Let us pick up where we left off."


@dataclass(frozen=True, slots=True)
class Caps:
    """The token and time limits a fork or a continuation is given; None keeps the earlier
    dialogue's. Both count the new dialogue's own calls, not the turns it carries over."""

    max_total_tokens: int | None = None
    max_seconds: float | None = None


async def fork(
    runner: DialogueRunner,
    parent_id: int,
    turn: int,
    rounds: int,
    budget: Decimal,
    origin: str,
    caps: Caps = Caps(),
) -> Dialogue:
    """Create a dialogue holding exactly turns 1–`turn` of the parent, to play `rounds` more rounds."""
    parent, turns, notes = await runner.store.history(parent_id)
    if not turns:
        raise InputError(f"dialogue {parent_id} has no turns yet to fork from")
    if not 1 <= turn <= len(turns):
        which = "turn 1" if len(turns) == 1 else f"a turn between 1 and {len(turns)}"
        raise InputError(f"dialogue {parent_id} has {counted(len(turns), 'turn')}; fork from {which}")
    kept = tuple(turns[:turn])
    kept_notes = tuple(n for n in notes if n.before_seq < turn)
    spec = _child_spec(parent, kept, kept_notes, rounds, budget, origin, caps)
    return await runner.create(replace(spec, parent=Lineage(parent.id, LineageKind.FORK, turn)))


async def continue_dialogue(
    runner: DialogueRunner,
    parent_id: int,
    rounds: int,
    budget: Decimal,
    origin: str,
    opening: str | None = None,
    summary_model: str | None = None,
    caps: Caps = Caps(),
) -> Dialogue:
    """Create a dialogue that remembers a finished one: carried over whole if it fits every model's
    context, else summarised (the summary's cost counted in the new budget) into the system prompts."""
    parent, turns, notes = await runner.store.history(parent_id)
    if not parent.status.is_final:
        raise StateError(f"dialogue {parent_id} has not ended; stop it first, or fork it at a turn")
    if not any(t.text for t in turns):
        raise InputError(f"dialogue {parent_id} has nothing to remember; start a new dialogue instead")
    if await _fits_whole(runner, parent, turns, notes):
        spec = _child_spec(parent, tuple(turns), tuple(notes), rounds, budget, origin, caps)
        return await runner.create(replace(spec, parent=Lineage(parent.id, LineageKind.CONTINUE, len(turns))))
    spec = _child_spec(parent, (), (), rounds, budget, origin, caps)
    spec = replace(
        spec,
        opening=opening or CONTINUE_OPENING,
        parent=Lineage(parent.id, LineageKind.CONTINUE, 0),
        summary_model=summary_model or parent.summary_model,
    )
    child = await runner.create(spec)
    try:
        await _remember(runner, child, parent, turns, notes)
    except BaseException:
        if (await runner.store.get_dialogue(child.id)).totals.spent_usd == 0:
            await runner.store.delete_dialogue(child.id)  # nothing was spent: leave no half-made dialogue
        raise
    return await runner.store.get_dialogue(child.id)


def _child_spec(
    parent: Dialogue,
    inherited: tuple[Turn, ...],
    inherited_notes: tuple[Note, ...],
    rounds: int,
    budget: Decimal,
    origin: str,
    caps: Caps,
) -> DialogueSpec:
    count = len(parent.participants)
    limits = Limits(
        max_rounds=carried_rounds(len(inherited), count) + rounds,
        budget_usd=budget,
        max_total_tokens=parent.limits.max_total_tokens
        if caps.max_total_tokens is None
        else caps.max_total_tokens,
        max_seconds=parent.limits.max_seconds if caps.max_seconds is None else caps.max_seconds,
    )
    return DialogueSpec(
        parent.participants,
        parent.opening,
        limits,
        origin=origin,
        context_policy=parent.context_policy,
        loop_action=parent.loop_action,
        summary_model=parent.summary_model,
        referee=parent.referee,
        referee_every=parent.referee_every,
        inherited=inherited,
        inherited_notes=inherited_notes,
    )


async def _fits_whole(runner: DialogueRunner, parent: Dialogue, turns: list[Turn], notes: list[Note]) -> bool:
    """Return whether every model could read the whole earlier history (nothing truncated or
    compacted away) and still reply."""
    rate = tokens_per_byte(parent, turns, notes)
    window = Window()
    for seat, persona in enumerate(parent.participants):
        if persona.is_human:
            continue
        model = await runner.router.model(persona)
        if model.context_length is None:
            continue
        messages = build_messages(parent.participants, seat, parent.opening, turns, window, notes)
        if (
            expected_tokens(count_bytes(messages), rate) + max_tokens_of(persona, model)
            > model.context_length
        ):
            return False
    return True


async def _remember(
    runner: DialogueRunner, child: Dialogue, parent: Dialogue, turns: list[Turn], notes: list[Note]
) -> None:
    """Summarise the parent under the child's budget and give every persona the memory of it."""
    speaker = next(p for p in parent.participants if not p.is_human)
    persona, model, words = await summary_writer(
        runner.router, child.summary_model or speaker.model, speaker, runner.tuning.summary_max_tokens
    )
    window = current_window(notes)
    first = window.first_kept
    rate = tokens_per_byte(parent, turns, notes)

    def ask(first: int) -> list[dict[str, str]]:
        return summary_messages(
            parent.participants, parent.opening, turns[first:], notes, window.summary, words
        )

    messages = ask(first)
    # A summariser with a small context reads the most recent turns it can hold.
    while (
        model.context_length
        and expected_tokens(count_bytes(messages), rate) + (persona.max_tokens or 0) > model.context_length
    ):
        if first >= len(turns) - 1:
            raise InputError(
                f"{model.id} cannot hold even one turn of dialogue {parent.id}; set VOICES_SUMMARY_MODEL"
            )
        first += 1
        messages = ask(first)
    what = f"remembering dialogue {parent.id}"
    try:
        summary = await runner.summariser.write(
            child.id,
            0,
            persona,
            model,
            messages,
            Budget(child.limits.budget_usd),
            Control(),
            None,
            what,
            tokens_left(child.limits, 0),
        )
    except Halted as stopped:
        if stopped.reason is StopReason.BUDGET:
            raise InputError(
                f"the budget does not cover {what}: {stopped.detail}; raise the budget"
            ) from None
        if stopped.reason is StopReason.TOKENS:
            raise InputError(
                f"{stopped.detail} (dialogue {parent.id}'s token limit, which a continuation keeps); "
                "start a new dialogue instead"
            ) from None
        raise ProviderError(f"{what}: {stopped.detail}") from None
    note = Note(
        child.id,
        0,
        NoteKind.MEMORY,
        summary.text,
        child.created_at,
        model=summary.model,
        usage=summary.usage,
        cost_usd=summary.cost,
    )
    if not summary.text:
        await runner.store.remember(note, [p.system_prompt for p in child.participants], settles_seq=0)
        await runner.store.finish_dialogue(
            child.id, StopReason.EMPTY_REPLY, f"the summary of {what} came back empty", child.created_at
        )
        raise ProviderError(f"the summary for {what} came back empty; try again, or set VOICES_SUMMARY_MODEL")
    when = parent.created_at.strftime("%Y-%m-%d")
    prompts = []
    for persona_here in child.participants:
        others = ", ".join(p.name for p in child.participants if p.name != persona_here.name)
        memory = (
            f"You ({persona_here.name}) have spoken with {others} before, on {when}. "
            f"What you discussed then, in summary:\n{summary.text}"
        )
        prompts.append(f"{persona_here.system_prompt}\n\n{memory}" if persona_here.system_prompt else memory)
    await runner.store.remember(note, prompts, settles_seq=0)
