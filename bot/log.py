"""Logging set-up: one stderr handler whose formatter masks every secret it is given, and webhook
tokens, in the whole line, tracebacks included."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from bot.text import Masker

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that narrate every request and query; their detail helps nobody running Voices, and
# discord.py's names webhook URLs, tokens and all. VOICES_LIBRARY_LOG_LEVEL lets them speak.
QUIET = ("httpx", "httpcore", "aiosqlite", "asyncio", "discord", "simcord")


class MaskingFormatter(logging.Formatter):
    """Format a record, then mask secrets anywhere in it (message, arguments, traceback)."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__(FORMAT)
        self._mask = Masker(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._mask(super().format(record))


def setup_logging(level: str, secrets: Iterable[str] = (), library_level: str = "WARNING") -> None:
    """Send logs to stderr at `level`, with secrets masked; libraries log at `library_level` at most
    as loudly as Voices itself."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(max(root.level, logging.getLevelName(library_level.upper())))
