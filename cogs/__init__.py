"""The Discord adapter (the `/voices` commands). It arrives with the Discord bridge issue; the engine
in `bot/` already holds everything a dialogue is, so this package will stay thin."""

EXTENSIONS: tuple[str, ...] = ()
