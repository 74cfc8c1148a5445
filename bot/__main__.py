"""The composition root: read the settings once, set up logging, and run the `voices` command."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bot import eventloop
from bot.cli import CliDefaults, build_parser, discard_output, dispatch, not_utf8
from bot.console import Terminal
from bot.database import Address
from bot.errors import ProviderError, VoicesError
from bot.log import setup_logging
from bot.text import visible
from config import Settings


def cli_defaults(settings: Settings) -> CliDefaults:
    """Return the CLI's defaults from the settings."""
    return CliDefaults(
        rounds=settings.default_rounds,
        budget=settings.default_budget,
        max_tokens=settings.default_max_tokens,
        transcripts_dir=settings.transcripts_dir,
        personas_file=settings.personas_file,
        max_seconds=settings.max_seconds,
        max_total_tokens=settings.max_total_tokens,
        context_policy=settings.context_policy,
        loop_action=settings.loop_action,
        summary_model=settings.summary_model,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `voices` console script; return the exit status."""
    # A terminal that cannot show a character (PYTHONIOENCODING=ascii, a Latin-1 locale) shows
    # '?' for it, rather than the run failing at the first '·' or accented word a model writes.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    argv = list(sys.argv[1:] if argv is None else argv)
    if (bad := not_utf8(argv)) is not None:
        fail(bad)
        return 2
    parser = build_parser()
    if not argv:
        # A newcomer's first `voices`: what it can do, rather than an error about a missing COMMAND.
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    # Flags that stand in for a setting (`voices bot --shards`) outrank the environment.
    flags = {
        name: value
        for name in ("shard_count", "shards", "gateway_only")
        if (value := getattr(args, name, None)) not in (None, False)
    }
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "_".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if name in flags:
            fail(f"--{name.replace('_', '-')}: {message}")
            return 2
        # A field read through an alias (OPENROUTER_API_KEY) is named by it already.
        name = name if name.isupper() else f"VOICES_{name.upper()}"
        fail(f"{name}: {message}; fix it in .env or the environment")
        return 2
    config = settings.engine_config()
    token = settings.discord_token
    secrets = [config.api_key or "", token.get_secret_value() if token else ""]
    secrets += [spec.api_key for spec in config.providers if spec.api_key]
    if isinstance(config.database, Address) and config.database.password:
        secrets.append(config.database.password)
    setup_logging(settings.log_level, secrets, settings.library_log_level, settings.log_format == "json")
    if args.command in ("bot", "worker"):
        return run_bot(settings, worker=args.command == "worker")
    try:
        # soft_wrap: long lines (paths, streamed text) are left to the terminal, never cut by rich.
        console = Terminal(highlight=False, soft_wrap=True)
        return eventloop.run(dispatch(args, config, cli_defaults(settings), console))
    except ProviderError as exc:
        fail(str(exc))
        return 1
    except VoicesError as exc:
        fail(str(exc))
        return 2
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except BrokenPipeError:  # the reader of the output went away (`voices list | head`): quietly
        discard_output()
        return 1


def run_bot(settings: Settings, worker: bool = False) -> int:
    """Run the Discord bot (or, as a `worker`, its dialogues without a gateway) until it is
    stopped; a missing or rejected token is one line."""
    import aiohttp
    import discord  # only the bot needs discord.py; the CLI starts faster without it

    from cogs import create_bot

    # Voices never joins voice channels; discord.py's warnings about voice libraries are noise.
    logging.getLogger("discord.client").addFilter(
        lambda r: "voice will NOT be supported" not in r.getMessage()
    )

    token = settings.discord_token
    if token is None:
        fail("DISCORD_TOKEN is not set; put the bot's token in .env or the environment")
        return 2

    async def serve() -> None:
        async with create_bot(settings, worker) as bot:
            # Asked to stop (Ctrl-C, `docker stop`), close: each dialogue's lease is given up, so
            # another worker carries it on at once instead of after the lease lapses.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
            if worker:
                await bot.work(token.get_secret_value())
            else:
                await bot.start(token.get_secret_value())

    try:
        eventloop.run(serve())
    except discord.LoginFailure:
        fail("Discord rejected DISCORD_TOKEN; reset the token in the Developer Portal and set it again")
        return 2
    except discord.HTTPException as exc:  # an answer at login other than "bad token"
        reason = exc.text or exc.response.reason
        fail(f"Discord answered {exc.status} while the bot logged in ({reason}); try again")
        return 1
    except (aiohttp.ClientError, OSError) as exc:
        fail(f"cannot reach Discord ({type(exc).__name__}: {exc}); check the network")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def fail(message: str) -> None:
    """Print one error line to stderr, unwrapped whatever the terminal width; what it quotes
    (a name, a server's words) cannot move the cursor or break the line."""
    print(f"error: {visible(message)}", file=sys.stderr)


if __name__ == "__main__":
    # `python -m bot` with no arguments runs the Discord bot (the Docker image's default).
    sys.exit(main(sys.argv[1:] or ["bot"]))
