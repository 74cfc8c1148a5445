"""Settings and data files: the only package that reads the environment."""

from config.settings import DISCORD_READ_PACE, TERMINAL_READ_PACE, Settings

__all__ = ["DISCORD_READ_PACE", "TERMINAL_READ_PACE", "Settings"]
