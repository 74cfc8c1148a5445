"""Voices: the dialogue engine. Plain async Python; it never imports discord, cogs or config."""

__version__ = "0.1.0"
