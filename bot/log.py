"""Logging set-up: one stderr handler whose formatter masks every secret it is given, and webhook
tokens, in the whole line, tracebacks included; as text, or one JSON object per line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from bot.text import Masker

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that narrate every request and query; their detail helps nobody running Voices, and
# discord.py's names webhook URLs, tokens and all. VOICES_LIBRARY_LOG_LEVEL lets them speak.
QUIET = ("httpx", "httpcore", "aiosqlite", "asyncio", "discord", "simcord")


class MaskingFormatter(logging.Formatter):
    """Format a record, then mask secrets anywhere in it (message, arguments, traceback)."""

    def __init__(self, secrets: Iterable[str], as_json: bool = False):
        super().__init__(FORMAT)
        self._mask = Masker(secrets)
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if not self._json:
            return self._mask(super().format(record))
        # Each field is masked before it is encoded, so a mask never breaks the JSON around it.
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._mask(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = self._mask(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def setup_logging(
    level: str, secrets: Iterable[str] = (), library_level: str = "WARNING", as_json: bool = False
) -> None:
    """Send logs to stderr at `level`, with secrets masked, as text or JSON lines; libraries log at
    `library_level` at most as loudly as Voices itself."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(secrets, as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(max(root.level, logging.getLevelName(library_level.upper())))
