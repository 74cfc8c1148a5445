"""The `voices` command line: argument parsing and one coroutine per subcommand.

Settings reach this module as plain values (`CliDefaults`, `EngineConfig`) from `bot.__main__`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import math
import os
import signal
import stat
import string
import sys
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from rich.console import Console
from rich.markdown import Markdown

from bot import usage
from bot.app import App, EngineConfig, check_personas, open_app
from bot.backup import back_up, check, landing, sqlite_file
from bot.budget import parse_usd
from bot.catalogue import Catalogue
from bot.chart import render_png
from bot.console import DialogueView, dialogue_table, model_table, usage_table
from bot.control import Control
from bot.database import address
from bot.errors import InputError, ProviderError
from bot.events import AwaitingHuman, Ended, Event
from bot.lineage import Caps, continue_dialogue, fork
from bot.models import (
    DRY_RUN,
    HUMAN,
    MAX_SEED,
    Ask,
    ContextPolicy,
    Dialogue,
    DialogueSpec,
    Limits,
    LoopAction,
    ModelInfo,
    Persona,
    Status,
)
from bot.personas import load_personas, resolve_participants, resolve_persona
from bot.providers import local
from bot.providers.local import is_local, local_available
from bot.text import counted, printable, repair, visible
from bot.transcript import render_json, render_markdown
from bot.transfer import copy_database
from bot.usage import GROUPINGS

_T = TypeVar("_T")

SEATS = string.ascii_lowercase[:4]
DEFAULT_OPENING = (
    "Introduce yourself in two sentences, then ask the other a question you really wonder about."
)
# Who talks when --a and --b are left out: two cloud personas with a key, else two free local ones.
CLOUD_PAIR = ("claude", "glm")
LOCAL_PAIR = ("ada", "basil")


@dataclass(frozen=True, slots=True)
class CliDefaults:
    """Defaults the settings provide for options the user leaves out."""

    rounds: int
    budget: Decimal
    max_tokens: int
    transcripts_dir: Path
    personas_file: Path
    max_seconds: float | None = None
    max_total_tokens: int | None = None
    context_policy: ContextPolicy = ContextPolicy.STOP
    loop_action: LoopAction = LoopAction.NOTIFY
    summary_model: str | None = None


def not_utf8(argv: Sequence[str]) -> str | None:
    """Say which argument is not valid UTF-8 (Python keeps such bytes as lone surrogates), if any."""
    for index, arg in enumerate(argv):
        if repair(arg) != arg:
            named = argv[index - 1] if index and argv[index - 1].startswith("-") else f"argument {index + 1}"
            return f"{named} is not valid UTF-8 text; check the terminal's or the script's encoding"
    return None


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument said in one line (no usage block) and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The innermost command parsed leaves itself here (a subcommand's defaults override its
        # parent's), so an argument no command knows is named with that command's help.
        self.set_defaults(parsed_by=self)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parsed.parsed_by.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {visible(message)}; see `{self.prog} --help`\n")


# The largest whole number SQLite stores; an id or a limit past it could never be one.
LARGEST = 2**63 - 1


def _whole(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {least}, not '{text}'")
        if value > LARGEST:
            raise argparse.ArgumentTypeError(f"must be at most {LARGEST}, not '{text}'")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, not '{text}'")
    return value


def _date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a day as YYYY-MM-DD, not '{text}'") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not '{text}'")
    return value


def _name(text: str) -> str:
    """A person's name as typed: blank would be written as an empty name in every transcript."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a name, not blank; leave it out to use your login")
    return text.strip()


def _version() -> str:
    try:
        return metadata.version("voices")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every `voices` subcommand."""
    parser = Parser(prog="voices", description="Let AI models talk to each other.")
    parser.add_argument("--version", action="version", version=f"voices {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser("run", help="run a dialogue and stream it here")
    for seat in SEATS:
        run.add_argument(
            f"--{seat}",
            metavar="PERSONA_OR_MODEL",
            help=f"participant {seat.upper()}: a persona name, a model id, or 'human' (you, typing; "
            "'human:NAME' to choose your name)",
        )
        run.add_argument(f"--system-{seat}", metavar="TEXT", help=f"system prompt for {seat.upper()}")
    run.add_argument("--rounds", type=_whole(1), help="rounds (each participant speaks once per round)")
    run.add_argument("--budget", type=_usd, help="hard cap in USD, e.g. 0.05")
    run.add_argument("--opening", default=DEFAULT_OPENING, help="the first message, given to participant A")
    run.add_argument("--max-tokens", type=_whole(16), help="reply cap per turn for every participant")
    _add_caps(run)
    run.add_argument(
        "--seed",
        type=_seed,
        help="repeat a run: the same seed, models and prompts sample the same replies where the "
        "model can (local models do); without it, each run draws its own (see the JSON transcript)",
    )
    run.add_argument(
        "--context",
        choices=[str(p) for p in ContextPolicy],
        help="when the history outgrows a model's context: stop, truncate the oldest turns, or "
        "compact them into a summary (default: VOICES_CONTEXT_POLICY)",
    )
    run.add_argument("--summary-model", metavar="MODEL", help="the model that writes compaction summaries")
    run.add_argument(
        "--referee",
        metavar="PERSONA_OR_MODEL",
        help="a model that takes no turns but gives its verdict at the end, paid from the budget",
    )
    run.add_argument(
        "--referee-every",
        type=_whole(1),
        metavar="N",
        help="a verdict after every N rounds too, not only at the end (needs --referee)",
    )
    run.add_argument(
        "--on-loop",
        choices=[str(a) for a in LoopAction],
        help="when the dialogue goes in circles: notify, pause or stop (default: VOICES_LOOP_ACTION)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="no network and no cost: a scripted stand-in answers for every model",
    )
    _add_run_output(run)

    resume = sub.add_parser("resume", help="continue an interrupted or paused dialogue")
    resume.add_argument("id", type=_whole(1))
    _add_run_output(resume)

    sequel = sub.add_parser(
        "continue",
        help="start a new dialogue that remembers a finished one (whole if it fits, else in summary)",
    )
    sequel.add_argument("id", type=_whole(1))
    sequel.add_argument("--rounds", type=_whole(1), help="rounds to play (default: VOICES_DEFAULT_ROUNDS)")
    sequel.add_argument("--budget", type=_usd, help="hard cap in USD; a summary is paid from it")
    sequel.add_argument("--opening", help="the new first message, when the earlier one is summarised")
    sequel.add_argument("--summary-model", metavar="MODEL", help="the model that writes the summary")
    _add_caps(sequel, kept=True)
    _add_run_output(sequel)

    branch = sub.add_parser("fork", help="start a new dialogue from any turn of an earlier one")
    branch.add_argument("id", type=_whole(1))
    branch.add_argument("turn", type=_whole(1), help="the last turn to keep (1 is the first)")
    branch.add_argument(
        "--rounds", type=_whole(1), help="rounds to play from there (default: VOICES_DEFAULT_ROUNDS)"
    )
    branch.add_argument("--budget", type=_usd, help="hard cap in USD")
    _add_caps(branch, kept=True)
    _add_run_output(branch)

    note = sub.add_parser(
        "interject", help="add a note every model reads at the dialogue's next turn boundary"
    )
    note.add_argument("id", type=_whole(1))
    note.add_argument("text")
    note.add_argument("--as", dest="author", type=_name, help="who says it (default: your login)")

    halt = sub.add_parser(
        "stop", help="stop a dialogue, whichever process runs it (after its turn in flight)"
    )
    halt.add_argument("id", type=_whole(1))
    halt.add_argument("--now", action="store_true", help="cut the reply in flight off as well")
    hold = sub.add_parser(
        "pause", help="pause a running dialogue after its turn in flight (`resume` goes on)"
    )
    hold.add_argument("id", type=_whole(1))

    listing = sub.add_parser("list", help="recent dialogues")
    listing.add_argument("--limit", type=_whole(1), default=20)

    show = sub.add_parser("show", help="print a dialogue's transcript")
    show.add_argument("id", type=_whole(1))

    export = sub.add_parser(
        "export", help="write a dialogue's transcript as Markdown or JSON, or its picture as PNG"
    )
    export.add_argument("id", type=_whole(1))
    export.add_argument(
        "--format",
        choices=("md", "json", "png"),
        default="md",
        help="md or json: a transcript; png: a picture of tokens per turn and spend against the budget",
    )
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")

    bot = sub.add_parser("bot", help="run the Discord bot (needs DISCORD_TOKEN)")
    bot.add_argument(
        "--shard-count",
        type=int,
        metavar="N",
        help="how many gateway shards in all (default: Discord's advice)",
    )
    bot.add_argument(
        "--shards", metavar="IDS", help="the shards this process runs, as 0-3 or 0,2,5 (default: all of them)"
    )
    bot.add_argument(
        "--gateway-only",
        action="store_true",
        help="open threads and take commands, and leave every dialogue to `voices worker` processes",
    )
    sub.add_parser(
        "worker",
        help="run Discord dialogues without a gateway: those a gateway left, or a stopped process had "
        "(needs DISCORD_TOKEN and a database the gateway shares)",
    )

    models = sub.add_parser("models", help="search the model catalogue")
    models.add_argument("search", nargs="?", default="")
    models.add_argument("--refresh", action="store_true", help="fetch the catalogue again now")

    spend = sub.add_parser("usage", help="who spent what: by member, model, day or server")
    spend.add_argument("--since", type=_date, help="from this day on (YYYY-MM-DD, UTC)")
    spend.add_argument("--by", choices=GROUPINGS, default="member", help="how to group (default: member)")
    spend.add_argument("--format", choices=("table", "csv", "json"), default="table")

    database = sub.add_parser("db", help="back up, check or copy the database")
    tasks = database.add_subparsers(dest="task", required=True, metavar="TASK", parser_class=Parser)
    copy = tasks.add_parser("backup", help="copy the live database consistently, while dialogues run")
    copy.add_argument("path", type=Path, help="the file to write (replaced only once the copy is whole)")
    verify = tasks.add_parser("check", help="check a database or a backup: integrity and schema")
    verify.add_argument("path", type=Path, nargs="?", help="the file to check (default: VOICES_DATABASE)")
    move = tasks.add_parser("copy", help="copy every dialogue into an empty database (SQLite to PostgreSQL)")
    move.add_argument("source", help="the database to copy: a path, sqlite:///path or postgresql://…")
    move.add_argument("target", help="an empty database to copy it into, of either kind")
    return parser


def _add_caps(parser: argparse.ArgumentParser, kept: bool = False) -> None:
    """A dialogue's time and token limits; `kept`: a fork's or a continuation's, which keep the
    earlier dialogue's unless given."""
    default = " (default: the earlier one's)" if kept else ""
    parser.add_argument(
        "--max-seconds",
        type=_seconds,
        help=f"limit on the seconds spent waiting for replies (a pause does not count){default}",
    )
    parser.add_argument(
        "--max-total-tokens", type=_whole(1), help=f"limit on prompt+completion tokens{default}"
    )


def _add_run_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="folder for <id>.md and <id>.json")
    parser.add_argument("--show-reasoning", action="store_true", help="stream reasoning too (dim)")


def _usd(text: str) -> Decimal:
    try:
        return parse_usd(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def dispatch(
    args: argparse.Namespace, config: EngineConfig, defaults: CliDefaults, console: Console
) -> int:
    """Run the chosen subcommand; return the process exit status."""
    match args.command:
        case "run":
            return await run_dialogue(args, config, defaults, console)
        case "resume":
            return await resume_dialogue(args, config, defaults, console)
        case "continue" | "fork":
            return await branch_dialogue(args, config, defaults, console)
        case "interject":
            async with open_app(config) as app:
                author = args.author or getpass.getuser().capitalize()
                note = await app.runner.interject(args.id, author, args.text)
            console.print(f"Noted: every model reads it before turn {note.before_seq + 1}.", markup=False)
        case "stop" | "pause":
            action = Ask.of(args.command, getattr(args, "now", False))
            async with open_app(config) as app:
                if await app.runner.ask(args.id, action):
                    console.print(
                        f"Asked the process running dialogue {args.id} to {args.command} {action.when}; "
                        "it takes the ask within a second.",
                        markup=False,
                    )
                else:
                    paths = await write_transcripts(app, args.id, defaults.transcripts_dir)
                    console.print(
                        f"Stopped dialogue {args.id} (no process was running it). "
                        f"Transcripts: {paths[0]}  {paths[1]}",
                        markup=False,
                        highlight=False,
                    )
        case "list":
            async with open_app(config) as app:
                dialogues = await app.store.list_dialogues(args.limit)
            if dialogues:
                console.print(dialogue_table(dialogues))
            else:
                console.print("No dialogues yet: `voices run` starts one.", markup=False)
        case "show":
            async with open_app(config) as app:
                text = await _render(app, args.id, "md")
            text = printable(text)  # what a model wrote is shown, never obeyed by the terminal
            console.print(Markdown(text) if console.is_terminal else text, markup=False)
        case "export" if args.format == "png":
            if args.out is None and sys.stdout.isatty():
                raise InputError("a PNG is not for a terminal; give --out FILE (or redirect the output)")
            async with open_app(config) as app:
                picture = render_png(*await app.store.history(args.id))
            if args.out:
                write_atomically(args.out, picture)
                console.print(f"wrote {args.out}", markup=False)
            else:
                sys.stdout.buffer.write(picture)
        case "export":
            async with open_app(config) as app:
                text = await _render(app, args.id, args.format)
            if args.out:
                write_atomically(args.out, text)
                console.print(f"wrote {args.out}", markup=False)
            else:
                console.file.write(text)
        case "db":
            return await run_db_task(args, config, console)
        case "usage":
            async with open_app(config) as app:
                rows = await usage.report(app.store, args.by, args.since)
            if args.format == "csv":
                console.file.write(usage.as_csv(rows, args.by))
            elif args.format == "json":
                console.file.write(usage.as_json(rows, args.by))
            elif rows:
                console.print(usage_table(rows, args.by))
            else:
                console.print("No spend yet.", markup=False)
        case "models":
            async with open_app(config) as app:
                found, silent = await search_catalogue(app, args.search, args.refresh)
                named, down = await search_named(app, args.search, args.refresh)
            found += named + [("local", m) for m in local.search_installed(args.search)]
            silent += down
            console.print(model_table(found))
            console.print(counted(len(found), "model"), style="dim")
            for line in silent:
                console.print(line, style="yellow", markup=False)
    return 0


async def run_db_task(args: argparse.Namespace, config: EngineConfig, console: Console) -> int:
    """Back up, check or copy a database; a check that finds a problem exits 1 with it in one line."""
    if args.task == "copy":
        copied = await copy_database(args.source, args.target)
        console.print(copied.describe(), markup=False)
        return 0
    live = address(config.database)
    if args.task == "backup":
        health = back_up(sqlite_file(live, "voices db backup"), args.path)
        console.print(f"backed up {live} to {health.describe()}", markup=False)
        return 0
    health = check(args.path or sqlite_file(live, "voices db check"))
    if not health.ok:
        print(f"error: {visible(health.describe())}", file=sys.stderr)
        return 1
    console.print(health.describe(), markup=False)
    return 0


async def search_catalogue(
    app: App, search: str, refresh: bool
) -> tuple[list[tuple[str, ModelInfo]], list[str]]:
    """Return OpenRouter's models that match; when it cannot be reached, the stored copy's and a
    line saying so (what is known here is still worth listing)."""
    try:
        if refresh:
            await app.catalogue.models(refresh=True)
        return [("openrouter", m) for m in await app.catalogue.search(search)], []
    except ProviderError as exc:
        fetched_at, stored = await app.catalogue.search_stored(search)
        copy = f"showing the copy from {fetched_at:%Y-%m-%d %H:%M} UTC" if fetched_at else "no copy is stored"
        return [("openrouter", m) for m in stored], [
            f"openrouter: the catalogue could not be refreshed ({exc}); {copy}"
        ]


async def search_named(app: App, search: str, refresh: bool) -> tuple[list[tuple[str, ModelInfo]], list[str]]:
    """Return the models of the persona library's servers that match, by server, and a line for each
    server that did not answer (one down server must not hide the others)."""
    found: list[tuple[str, ModelInfo]] = []
    silent = []
    for name, route in app.runner.router.named.items():
        if not isinstance(route.catalogue, Catalogue):
            continue
        try:
            if refresh:
                await route.catalogue.models(refresh=True)
            found += [(name, m) for m in await route.catalogue.search(search)]
        except ProviderError as exc:
            silent.append(f"{name}: no model list ({exc})")
    return found, silent


async def run_dialogue(
    args: argparse.Namespace, config: EngineConfig, defaults: CliDefaults, console: Console
) -> int:
    """Create a dialogue from the options, stream it, and write its transcripts."""
    check_personas(config)
    spec = _spec(args, defaults, _default_pair(args, config))
    if args.dry_run:
        config = replace(config, dry_run_models=_models_of(_seated(spec), spec.summary_model))
        spec = replace(spec, origin=DRY_RUN)
    else:
        _require_key(config, _seated(spec))
    check_writable(args.out or defaults.transcripts_dir)
    async with open_app(config) as app:
        dialogue = await app.runner.create(spec)
        return await _drive(app, dialogue.id, args, defaults, console)


async def resume_dialogue(
    args: argparse.Namespace, config: EngineConfig, defaults: CliDefaults, console: Console
) -> int:
    """Continue a dialogue from its last committed turn."""
    check_writable(args.out or defaults.transcripts_dir)
    async with open_app(await _config_for(config, args.id)) as app:
        return await _drive(app, args.id, args, defaults, console)


async def branch_dialogue(
    args: argparse.Namespace, config: EngineConfig, defaults: CliDefaults, console: Console
) -> int:
    """Start a continuation or a fork of an earlier dialogue, then stream it like `run`."""
    check_writable(args.out or defaults.transcripts_dir)
    config = await _config_for(config, args.id, getattr(args, "summary_model", None))
    rounds = args.rounds if args.rounds is not None else defaults.rounds
    budget = args.budget if args.budget is not None else defaults.budget
    caps = Caps(args.max_total_tokens, args.max_seconds)
    async with open_app(config) as app:
        parent = await app.store.get_dialogue(args.id)
        origin = DRY_RUN if parent.origin == DRY_RUN else "cli"
        if args.command == "fork":
            child = await fork(app.runner, args.id, args.turn, rounds, budget, origin, caps)
        else:
            summary_model = args.summary_model or defaults.summary_model
            child = await continue_dialogue(
                app.runner,
                args.id,
                rounds,
                budget,
                origin,
                args.opening,
                summary_model,
                caps,
            )
        return await _drive(app, child.id, args, defaults, console)


async def _config_for(config: EngineConfig, dialogue_id: int, extra_model: str | None = None) -> EngineConfig:
    """Return the engine config that can run this dialogue: scripted for a dry run, else with a key."""
    check_personas(config)
    async with open_app(config) as app:
        dialogue = await app.store.get_dialogue(dialogue_id)
    if dialogue.origin == DRY_RUN:
        models = _models_of(_seated(dialogue), dialogue.summary_model)
        return replace(config, dry_run_models=models + ((extra_model,) if extra_model else ()))
    _require_key(config, _seated(dialogue))
    return config


async def _drive(
    app: App, dialogue_id: int, args: argparse.Namespace, defaults: CliDefaults, console: Console
) -> int:
    control = Control()
    loop = asyncio.get_running_loop()

    keyboard = Keyboard()

    def on_interrupt() -> None:
        console.print("\n[yellow]Stopping… (Ctrl-C again quits at once)[/]")
        control.stop(now=True)
        keyboard.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    view = DialogueView(console, show_reasoning=args.show_reasoning)
    ended: Dialogue | None = None
    closed = False

    def show(event: Event | None) -> None:
        """Show an event (None: the streamed text held back). When the output is closed (`voices
        run | head`), nobody watches any more: the reply in flight is cut off and the dialogue
        stops, as at Ctrl-C, with every whole turn kept."""
        nonlocal closed
        try:
            if event is None:
                view.flush()
            else:
                view.show(event)
        except BrokenPipeError:
            if not closed:
                closed = True
                discard_output()
                control.stop(now=True, detail="its output was closed")

    try:
        # aclosing: however this loop ends, the run gives its lease back before the store closes.
        async with aclosing(app.runner.run(dialogue_id, control)) as events:
            async for event in events:
                show(event)
                if isinstance(event, AwaitingHuman):
                    text = await keyboard.ask(event.timeout)
                    if text is None:
                        if keyboard.ended:
                            console.print("Your input ended before your turn: pausing.", style="yellow")
                        control.pause()  # no answer in time (or the input ended): wait for `voices resume`
                    else:
                        control.say(text)
                if isinstance(event, Ended):
                    ended = event.dialogue
    finally:
        show(None)  # the last words streamed before a stop or an error are on the screen too
        keyboard.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    assert ended is not None
    paths = await write_transcripts(app, dialogue_id, args.out or defaults.transcripts_dir)
    console.print(f"Transcripts: {paths[0]}  {paths[1]}", markup=False, highlight=False)
    if closed:
        turns = counted(len(await app.store.list_turns(dialogue_id)), "turn")
        print(
            f"voices: the output was closed, so dialogue {dialogue_id} stopped after {turns}; "
            f"transcripts: {paths[0]}  {paths[1]}",
            file=sys.stderr,
        )
        return 1
    return 1 if ended.status is Status.FAILED else 0


def discard_output() -> None:
    """Point standard output at /dev/null: its reader went away (`voices list | head`), and every
    later write, Python's own at exit included, would fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file behind stdout (a test's capture): nothing to point
        pass
    finally:
        os.close(devnull)


class Keyboard:
    """Lines typed at the terminal for a person's turn, read without holding up the event loop."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._task: asyncio.Future[str | None] | None = None
        #: Standard input reached its end: nobody will type here again.
        self.ended = False

    async def ask(self, timeout: float | None) -> str | None:
        """Return the next non-empty line; None when the time is up, the input ends or Ctrl-C."""
        while True:
            self._task = asyncio.ensure_future(self._line())
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            task, self._task = self._task, None
            if not done or task.cancelled():
                task.cancel()
                return None
            line = task.result()
            self.ended = line is None
            if line is None or line.strip():
                return line

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        """Stop reading, and give the terminal back in blocking mode, as the shell expects it."""
        if self._transport is not None:
            # The non-blocking flag asyncio set is shared with the shell's own descriptor.
            os.set_blocking(sys.stdin.fileno(), True)
            self._transport.close()
            self._transport = None

    async def _line(self) -> str | None:
        if self._reader is None and not _pollable(sys.stdin.fileno()):
            # A regular file or a device such as /dev/null: epoll refuses those, so read in a thread.
            line = await asyncio.to_thread(sys.stdin.readline)
            return line.rstrip("\n") if line else None
        if self._reader is None:
            reader = asyncio.StreamReader()
            # A duplicate of standard input, so that closing the pipe leaves sys.stdin open.
            pipe = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
            try:
                self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader), pipe
                )
            except (ValueError, OSError):  # a regular file: read it in a thread instead
                pipe.close()
                line = await asyncio.to_thread(sys.stdin.readline)
                return line.rstrip("\n") if line else None
            self._reader = reader
        raw = await self._reader.readline()
        return raw.decode(errors="replace").rstrip("\n") if raw else None


def _pollable(fd: int) -> bool:
    """Return whether the event loop can watch this descriptor: a terminal, a pipe or a socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def write_transcripts(app: App, dialogue_id: int, folder: Path) -> tuple[Path, Path]:
    """Write `<id>.md` and `<id>.json` into `folder`; return their paths."""
    paths = (folder / f"{dialogue_id}.md", folder / f"{dialogue_id}.json")
    history = await app.store.history(dialogue_id)
    write_atomically(paths[0], render_markdown(*history))
    write_atomically(paths[1], render_json(*history))
    return paths


def check_writable(folder: Path) -> None:
    """Raise InputError now if transcripts cannot be written to `folder`: before anything is paid."""
    # Nothing is created here (a refused dialogue leaves no trace): the folder, or the nearest
    # folder above it that exists, must be one this process may write in.
    existing = folder.absolute()
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # a name longer than the file system allows, say
        raise InputError(
            f"cannot write transcripts to {folder}: {exc.strerror}; choose another --out"
        ) from None
    if not existing.is_dir():
        why = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    else:
        return
    raise InputError(f"cannot write transcripts to {folder}: {why}; choose another --out")


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write text (or bytes) so that the file is either the old one or the whole new one, never half.

    A file is written beside itself and renamed into place, through a symbolic link to it (the
    link stays). What is not a file (a pipe, /dev/stdout, a device) is written into as it is:
    renaming onto it would put a file in its place."""
    data = content.encode() if isinstance(content, str) else content
    partial: Path | None = None
    try:
        if path.exists() and not path.is_file():
            with path.open("wb") as out:
                out.write(data)
            return
        target, beside = landing(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = beside  # from here on, a failed write leaves it to remove
        with partial.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # the whole new file is on disk before it takes the old one's place
        os.replace(partial, target)
    except OSError as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror}; choose another --out") from None


async def _render(app: App, dialogue_id: int, fmt: str) -> str:
    history = await app.store.history(dialogue_id)
    return render_markdown(*history) if fmt == "md" else render_json(*history)


def _default_pair(args: argparse.Namespace, config: EngineConfig) -> tuple[str, str]:
    """Return who talks as A and B: as given, or the default pair, or say how to get someone to talk."""
    if args.a is not None and args.b is not None:
        return args.a, args.b
    if (args.a is None) != (args.b is None):
        raise InputError("give both --a and --b, or neither for the default pair")
    # A dry run picks whom a real run would: the scripted stand-in answers for local models too.
    if config.api_key:
        return CLOUD_PAIR
    if local_available() or args.dry_run:
        return LOCAL_PAIR
    raise InputError(
        f"nobody to talk: set OPENROUTER_API_KEY for cloud models, or get the free local model; "
        f"{config.install_advice}"
    )


def _spec(args: argparse.Namespace, defaults: CliDefaults, pair: tuple[str, str]) -> DialogueSpec:
    if args.d is not None and args.c is None:
        raise InputError("--d was given without --c; seats fill in order, so give --c first (or use --c)")
    refs = [(seat, pair[SEATS.index(seat)] if seat in "ab" else getattr(args, seat)) for seat in SEATS]
    library = load_personas(defaults.personas_file)
    participants = resolve_participants(
        [(ref, getattr(args, f"system_{seat}")) for seat, ref in refs if ref is not None],
        library,
        _given(args.max_tokens, defaults.max_tokens),
        force_max_tokens=args.max_tokens is not None,
        person=_human,
    )
    limits = Limits(
        max_rounds=args.rounds if args.rounds is not None else defaults.rounds,
        budget_usd=args.budget if args.budget is not None else defaults.budget,
        max_total_tokens=_given(args.max_total_tokens, defaults.max_total_tokens),
        max_seconds=_given(args.max_seconds, defaults.max_seconds),
    )
    referee = None
    if args.referee is not None:
        if _human(args.referee.strip()) is not None:
            raise InputError(
                "the referee must be a persona or a model; a person can read along and interject"
            )
        referee = resolve_persona(args.referee, library, _given(args.max_tokens, defaults.max_tokens))
    return DialogueSpec(
        tuple(participants),
        args.opening,
        limits,
        context_policy=ContextPolicy(args.context or defaults.context_policy),
        loop_action=LoopAction(args.on_loop or defaults.loop_action),
        summary_model=args.summary_model or defaults.summary_model,
        seed=args.seed,
        referee=referee,
        referee_every=args.referee_every,
    )


def _given(value: _T | None, default: _T) -> _T:
    """Return the option as given (0 included: the parser has judged it), or the default."""
    return value if value is not None else default


def _human(ref: str) -> Persona | None:
    """Return the seat of the person at this terminal for `human` or `human:NAME` (named as they
    asked, or after their login); None for any other reference."""
    if ref != "human" and not ref.startswith(HUMAN):
        return None
    name = ref.removeprefix(HUMAN).strip() if ref != "human" else ""
    return Persona(name=name or getpass.getuser().capitalize() or "You", model=f"{HUMAN}terminal")


def _seated(dialogue: DialogueSpec | Dialogue) -> tuple[Persona, ...]:
    """Return everyone a dialogue may call a model for: its participants and its referee."""
    return dialogue.participants + ((dialogue.referee,) if dialogue.referee else ())


def _models_of(participants: Sequence[Persona], summary_model: str | None) -> tuple[str, ...]:
    """Return every model a dialogue may call: its participants' (referee included) and its summariser's."""
    return tuple(p.model for p in participants) + ((summary_model,) if summary_model else ())


def _require_key(config: EngineConfig, participants: Sequence[Persona]) -> None:
    """Refuse to start without the key, if anyone will be served by OpenRouter."""
    cloud = [p for p in participants if p.provider is None and not is_local(p.model) and not p.is_human]
    if cloud and not config.api_key:
        raise InputError(
            "OPENROUTER_API_KEY is not set; put it in .env or the environment "
            "(or add --dry-run to try Voices without one)"
        )
