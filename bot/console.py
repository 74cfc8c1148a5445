"""The terminal view of a running dialogue: who speaks, the reply as it streams, cost against budget."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence

from rich import box
from rich.console import COLOR_SYSTEMS, Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from bot.budget import format_usd
from bot.events import (
    AwaitingHuman,
    Delta,
    Ended,
    Event,
    Noted,
    Started,
    TurnFinished,
    TurnRestarted,
    TurnStarted,
)
from bot.models import DRY_RUN, Dialogue, ModelInfo, NoteKind, TurnStatus
from bot.text import counted, printable
from bot.transcript import headline
from bot.usage import UsageRow, total

SPEAKER_STYLES = ("bold cyan", "bold magenta", "bold green", "bold yellow")

#: Seconds between prints of streamed text, gathered: a print costs more than the rest of the
#: engine's work on a token, and 20 prints a second read as smoothly as one per token.
FLUSH_SECONDS = 0.05


class Terminal(Console):
    """The console `voices` writes to. A closed output (`voices run | head`) is raised as
    BrokenPipeError, for the caller to end what it was doing cleanly: rich's own handling exits
    the process at once, which would leave a running dialogue marked as running."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "the output was closed")


class DialogueView:
    """Render engine events to a rich Console as they happen."""

    def __init__(self, console: Console, show_reasoning: bool = False):
        self._console = console
        self._show_reasoning = show_reasoning
        self._budget = "$0"
        self._in_reasoning = False
        #: Whether the current attempt at a turn has put any visible text on the screen.
        self._shown = False
        #: Streamed text not yet printed, as (text, style) runs, and the timer that will print it.
        self._pending: list[tuple[str, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        #: When streamed text was last printed (the loop's clock): text that comes after a quiet
        #: spell is printed at once, the rest at most FLUSH_SECONDS after the print before it.
        self._printed = float("-inf")
        # Streamed text goes straight to the console's file, with the codes rich itself would write
        # (a test holds them equal): rich's print costs ~35 µs, mostly asking the terminal its size
        # and kind, and is made 20 times a second per dialogue. Where rich does more than write
        # (recording, Jupyter, legacy Windows consoles, quiet), it prints as before.
        self._direct = not (console.record or console.is_jupyter or console.legacy_windows or console.quiet)
        self._styles: dict[str, Style] = {}
        #: A write the timer's flush could not make (the reader of a pipe went away): raised to
        #: whoever shows the next event, since a timer's error would only reach the loop's log.
        self._failed: OSError | None = None

    def show(self, event: Event) -> None:
        """Render one event. Streamed text is printed within FLUSH_SECONDS, anything else at once
        (after the text before it)."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        if not isinstance(event, Delta):
            self.flush()
        match event:
            case Started(dialogue=dialogue):
                self._started(dialogue)
            case AwaitingHuman():
                style = SPEAKER_STYLES[event.seat % len(SPEAKER_STYLES)]
                self._console.rule(
                    Text.assemble(
                        (f"Round {event.round} · ", "dim"), (printable(event.persona.name), style), " (you)"
                    ),
                    align="left",
                )
                wait = f"; after {event.timeout:g} s it pauses" if event.timeout else ""
                self._console.print(Text(f"Your turn: type your reply and press Enter{wait}.", "bold"))
            case TurnStarted() if event.persona.is_human:
                pass  # their words are already on the screen, as they typed them
            case TurnStarted():
                style = SPEAKER_STYLES[event.seat % len(SPEAKER_STYLES)]
                title = Text.assemble(
                    (f"Round {event.round} · ", "dim"),
                    (printable(event.persona.name), style),
                    (f" ({printable(event.persona.model)})", "dim"),
                )
                self._console.rule(title, align="left")
                self._shown = False
            case Delta(reasoning=True) if self._show_reasoning:
                self._write(event.text, "dim italic")
                self._in_reasoning = True
                self._shown = self._shown or bool(event.text.strip())
            case Delta(reasoning=False):
                if self._in_reasoning:
                    self._write("\n")
                    self._in_reasoning = False
                self._write(event.text)
                self._shown = self._shown or bool(event.text.strip())
            case TurnRestarted():
                wait = f"; retrying in {event.delay:.1f} s" if event.delay else "; retrying"
                # Only a reply that was shown can be taken back; an empty one has nothing to discard.
                discarded = "; the partial reply above is discarded" if self._shown else ""
                if self._shown:
                    self._console.print()
                self._console.print(
                    Text(f"↻ {printable(event.reason)}{wait} (attempt {event.attempt}){discarded}", "yellow")
                )
                self._shown = self._in_reasoning = False
            case TurnFinished(turn=turn) if turn.is_human:
                pass
            case TurnFinished(turn=turn, spent=spent):
                self._console.print()
                if turn.status is TurnStatus.EMPTY:
                    self._console.print(Text("⚠ empty reply (nothing passed on)", "bold red"))
                elif turn.status is TurnStatus.CANCELLED:
                    self._console.print(Text("✂ cut off", "bold red"))
                elif why := turn.cut_short:
                    self._console.print(Text(f"✂ {why}", "yellow"))
                usage = turn.usage
                cached = f" (cached {usage.cached_tokens})" if usage.cached_tokens else ""
                about = "~" if usage.estimated else ""  # counted here, not reported by the provider
                self._console.print(
                    Text(
                        f"tokens: prompt={about}{usage.prompt_tokens}{cached} "
                        f"completion={about}{usage.completion_tokens} "
                        f"reasoning={about}{usage.reasoning_tokens} · cost {format_usd(turn.cost_usd)} · "
                        f"spent {format_usd(spent)} of {self._budget}",
                        "dim",
                    )
                )
            case Noted(note=note):
                self._console.print(Text(printable(headline(note)), "bold yellow"))
                if note.kind is NoteKind.COMPACTED:
                    self._console.print(Text(printable(note.text), "dim italic"))
                elif note.kind is NoteKind.VERDICT:
                    self._console.print(Text(printable(note.text)))
            case Ended(dialogue=dialogue):
                self._ended(dialogue)

    def flush(self) -> None:
        """Print the streamed text held back, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        # Model text is shown, never obeyed: an OSC 52 would write the clipboard, CSI 2J clear the
        # screen.
        if self._direct:
            out = self._console.file
            out.write("".join(self._styled(printable(text), style) for text, style in pending))
            out.flush()
            return
        for text, style in pending:
            self._console.print(Text(printable(text), style), end="", soft_wrap=True)

    def _flush_later(self) -> None:
        self._printed = asyncio.get_running_loop().time()
        try:
            self.flush()
        except OSError as exc:
            self._failed = exc

    def _styled(self, text: str, style: str) -> str:
        """Return text with the codes that give it `style` on this console, line by line as rich
        writes them (a tab is left for the terminal to place: rich would expand it as if the piece
        began a line)."""
        if not style or self._console.color_system is None:
            return text
        parsed = self._styles.get(style)
        if parsed is None:
            parsed = Style.parse(style)
            if self._console.no_color:
                parsed = parsed.without_color
            self._styles[style] = parsed
        system = COLOR_SYSTEMS[self._console.color_system]
        return "\n".join(parsed.render(line, color_system=system) for line in text.split("\n"))

    def _write(self, text: str, style: str = "") -> None:
        if self._pending and self._pending[-1][1] == style:
            self._pending[-1] = (self._pending[-1][0] + text, style)
        else:
            self._pending.append((text, style))
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a caller rendering by hand): print at once
                self.flush()
                return
            # Not printed now but when the loop next turns, so text that arrived together prints once.
            wait = min(FLUSH_SECONDS, max(0.0, self._printed + FLUSH_SECONDS - loop.time()))
            self._timer = loop.call_later(wait, self._flush_later)

    def _started(self, dialogue: Dialogue) -> None:
        self._budget = format_usd(dialogue.limits.budget_usd)
        names = printable(" ↔ ".join(p.name for p in dialogue.participants))
        self._console.print(
            Text.assemble(
                ("Dialogue ", "bold"),
                (str(dialogue.id), "bold"),
                f" · {names} · {counted(dialogue.limits.max_rounds, 'round')} · budget {self._budget}",
            )
        )
        self._console.print(Text(f"Opening: {printable(dialogue.opening)}", "italic"))

    def _ended(self, dialogue: Dialogue) -> None:
        self._console.rule()
        if dialogue.stop_reason is None:
            self._console.print(
                Text(
                    f"Paused after {format_usd(dialogue.totals.spent_usd)}; "
                    f"`voices resume {dialogue.id}` continues.",
                    "yellow",
                )
            )
            return
        style = "green" if dialogue.stop_reason.status.value != "failed" else "bold red"
        detail = f" ({printable(dialogue.stop_detail)})" if dialogue.stop_detail else ""
        self._console.print(Text(f"Ended: {dialogue.stop_reason.describe}{detail}", style))
        self._console.print(f"Total cost: {format_usd(dialogue.totals.spent_usd)} of {self._budget}")


def dialogue_table(dialogues: Sequence[Dialogue]) -> Table:
    """Return a table of dialogues that reads at 80 columns: id, who, state, reason, cost, when, and
    where they came from (a dry run, a fork, a continuation)."""
    # No vertical rules and short dates leave room; the short facts never wrap, the two phrases
    # (who, and where from) wrap between words, and nothing is cut off.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("participants", min_width=len("participants"), overflow="fold")
    for name in ("status", "reason", "cost", "created"):
        table.add_column(name, no_wrap=True)
    table.add_column("from", min_width=len("continues 9"), overflow="fold")
    for d in dialogues:
        origins = (["dry run"] if d.origin == DRY_RUN else []) + ([d.parent.describe] if d.parent else [])
        table.add_row(
            str(d.id),
            printable(" ↔ ".join(p.name for p in d.participants)),
            str(d.status),
            str(d.stop_reason or ""),
            format_usd(d.totals.spent_usd),
            d.created_at.strftime("%m-%d %H:%M"),
            ", ".join(origins),
        )
    return table


def model_table(models: Sequence[tuple[str, ModelInfo]]) -> Table:
    """Return a table of (provider, model) with context length and prices per million tokens (a
    cached prompt token's too, where the model has one)."""
    # Like the dialogue list, it reads at 80 columns: the id folds rather than being cut off. The
    # headings take two lines and the gaps two columns, so that at 80 most ids (which people copy
    # from here) keep to one line.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("model", min_width=len("local:default"), overflow="fold")
    for name in ("provider", "context", "max\nreply", "$/M\nin", "$/M\nout", "$/M\ncached"):
        table.add_column(name, no_wrap=True, justify="left" if name == "provider" else "right")
    million = 1_000_000
    for provider, m in sorted(models, key=lambda row: (row[0] != "openrouter", row[0], row[1].id)):
        cached = m.pricing.cache_read
        table.add_row(
            printable(m.id),
            printable(provider),
            str(m.context_length or "?"),
            str(m.max_completion_tokens or "?"),
            f"{m.pricing.prompt * million:.4g}",
            f"{m.pricing.completion * million:.4g}",
            f"{cached * million:.4g}" if cached is not None else "—",
        )
    return table


def usage_table(rows: Sequence[UsageRow], by: str) -> Table:
    """Return a spend report as a table, with the total under it."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_footer=True)
    table.add_column(by, footer="total", overflow="fold")
    # Headings on two lines: at 80 columns a model's id keeps the width they would take.
    for name in ("dialogues", "prompt\ntokens", "completion\ntokens"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("spent", footer=format_usd(total(rows)), justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            printable(row.key),
            str(len(row.dialogues)),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            format_usd(row.spent_usd),
        )
    return table
