"""Settings read from the environment and `.env`, built once at start-up and passed down as values."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.app import EngineConfig
from bot.database import address
from bot.errors import InputError
from bot.guilds import GuildPolicy
from bot.loops import LoopThresholds
from bot.models import ContextPolicy, LoopAction
from bot.personas import ProviderSpec, load_providers
from bot.plan import Tuning
from bot.providers.local import IMAGE_ADVICE, INSTALL
from bot.providers.openai_compat import check_base_url

CONFIG_DIR = Path(__file__).resolve().parent
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


#: Seconds between reads of a streamed reply, by where it is shown (VOICES_READ_PACE sets one for
#: both). The terminal prints 20 times a second. Discord shows one edit of a message a second, so
#: the bot reads four times a second: fewer, larger reads cost less CPU per token where hundreds of
#: dialogues share a process (docs/benchmarks.md section 2).
TERMINAL_READ_PACE = 0.05
DISCORD_READ_PACE = 0.25

#: The most shards Voices takes: far past what Discord gives any bot, and a bound on "0-999999999".
MAX_SHARDS = 100_000


def shard_ids(text: str) -> tuple[int, ...]:
    """Read shard ids as a person writes them: "0-3", "0,2,5" or both ("0-3,8"), each once."""
    ids: dict[int, None] = {}  # kept in the order given, each once
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise ValueError(f"{part!r} is not a shard or a range of them; write them as 0-3 or 0,2,5")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"the range {part} runs backwards; write it as {high}-{low}")
        if high >= MAX_SHARDS:
            raise ValueError(f"shard {high} is past the {MAX_SHARDS:,} shards Voices takes")
        ids.update(dict.fromkeys(range(low, high + 1)))
    return tuple(ids)


class Settings(BaseSettings):
    """Every knob of Voices; `config/.env.example` documents each variable."""

    model_config = SettingsConfigDict(
        env_prefix="VOICES_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    openrouter_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENROUTER_API_KEY", "VOICES_OPENROUTER_API_KEY"),
    )
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    #: A SQLite file (a path, or sqlite:///path) or a PostgreSQL server (postgresql://…).
    database: str = "data/voices.db"
    transcripts_dir: Path = Path("transcripts")
    personas_file: Path = CONFIG_DIR / "personas.toml"

    default_rounds: int = Field(default=6, ge=1, le=10_000)
    max_rounds: int = Field(default=50, ge=1, le=10_000)
    default_budget: Decimal = Field(
        default=Decimal("0.10"), gt=0, le=1_000_000, decimal_places=9, allow_inf_nan=False
    )
    max_budget: Decimal = Field(
        default=Decimal("5.00"), gt=0, le=1_000_000, decimal_places=9, allow_inf_nan=False
    )
    default_max_tokens: int = Field(default=2048, ge=16, le=10_000_000)
    max_seconds: float | None = Field(default=3600.0, gt=0, allow_inf_nan=False)
    max_total_tokens: int | None = Field(default=None, ge=1, le=10**15)

    # Long dialogues: the context policy and loop action are each dialogue's defaults.
    context_policy: ContextPolicy = ContextPolicy.COMPACT
    summary_model: str | None = None
    keep_recent: int = Field(default=4, ge=1, le=10_000)
    summary_max_tokens: int = Field(default=600, ge=64, le=10_000_000)
    loop_action: LoopAction = LoopAction.NOTIFY
    loop_similarity: float = Field(default=0.5, gt=0, le=1)
    loop_window: int = Field(default=4, ge=2, le=10_000)
    loop_repeats: int = Field(default=2, ge=1, le=10_000)
    loop_farewells: int = Field(default=3, ge=1, le=10_000)
    # People in the dialogue: seconds a person has for their turn before the dialogue pauses for them
    # (empty = no limit), and seconds between one member's interjections.
    human_timeout: float | None = Field(default=600.0, gt=0, allow_inf_nan=False)
    interject_cooldown: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    interject_max_chars: int = Field(default=500, ge=1, le=4000)
    # Seconds a dialogue's lease lasts unless its process renews it: how soon another process may
    # take over the dialogue of one that died.
    lease_seconds: float = Field(default=15.0, ge=1, le=3600)
    #: Delete dialogues that ended more than this many days ago, once a day (off when unset).
    retain_days: int | None = Field(default=None, ge=1, le=100_000)
    #: The health and metrics endpoint (/healthz, /metrics) of `voices bot`; off unless a port is set.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    #: Set by the Dockerfile: advice about installing things speaks of rebuilding the image, not pip.
    image: bool = False

    #: Comma-separated model id prefixes that cache only at explicit breakpoints.
    cache_breakpoint_models: str = "anthropic/,google/gemini"

    # The Discord bridge (`voices bot`).
    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "VOICES_DISCORD_TOKEN")
    )
    dev_guild_id: int | None = None
    #: The gateway split between processes: how many shards in all (unset: as many as Discord
    #: recommends, all in this process), and which of them this process runs ("0-3", "0,2,5").
    shard_count: int | None = Field(default=None, ge=1, le=MAX_SHARDS)
    shards: Annotated[tuple[int, ...] | None, NoDecode] = None
    #: With workers (`voices worker`): the gateway opens threads and takes commands, and leaves
    #: every dialogue for a worker to run. Unset, `voices bot` runs its dialogues itself.
    gateway_only: bool = False
    #: How many dialogues one worker runs at most; past that it leaves them to the others.
    worker_dialogues: int = Field(default=100, ge=1, le=10_000)
    daily_cap_guild: Decimal = Field(
        default=Decimal("5.00"), ge=0, le=1_000_000, decimal_places=9, allow_inf_nan=False
    )
    daily_cap_member: Decimal = Field(
        default=Decimal("1.00"), ge=0, le=1_000_000, decimal_places=9, allow_inf_nan=False
    )
    max_concurrent: int = Field(default=3, ge=1, le=10_000)
    reasoning: Literal["hide", "spoiler", "file"] = "hide"
    #: An audience vote (a Discord poll) at each dialogue's end, open this many hours; servers may
    #: switch it off or change it in /voices config.
    polls: bool = True
    poll_hours: int = Field(default=24, ge=1, le=768)

    connect_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    # Reasoning models may send nothing but keep-alive comments for minutes; reads wait this long.
    read_timeout: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    # Seconds between reads of a streamed reply (what came meanwhile is read in one piece); unset,
    # each front end's own (TERMINAL_READ_PACE, DISCORD_READ_PACE).
    read_pace: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    catalogue_ttl_hours: float = Field(default=24.0, ge=0, le=100_000)
    log_level: LogLevel = "WARNING"
    # discord.py, httpx and aiosqlite log at most this loudly (their debug lines name webhook URLs;
    # tokens are masked all the same).
    library_log_level: LogLevel = "WARNING"
    #: `json` writes one JSON object per log line (time, level, logger, message, exception).
    log_format: Literal["text", "json"] = "text"

    @field_validator(
        "openrouter_api_key",
        "discord_token",
        "summary_model",
        "human_timeout",
        "max_total_tokens",
        "retain_days",
        "metrics_port",
        "dev_guild_id",
        "shard_count",
        "read_pace",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # `VOICES_METRICS_PORT=` (as compose writes `${VOICES_METRICS_PORT:-}`) means unset, not an
        # error. `VOICES_MAX_SECONDS=` stays an error: its unset is 3,600, and blank could mean either.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "library_log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("openrouter_api_key", "discord_token")
    @classmethod
    def _printable_ascii(cls, value: SecretStr | None) -> SecretStr | None:
        # An HTTP header cannot carry other characters; a pasted key with a stray accent or space
        # would otherwise fail deep inside the first request. The key itself is never repeated.
        secret = value.get_secret_value() if value else ""
        if secret and not (secret.isascii() and secret.isprintable() and " " not in secret):
            raise ValueError("has a character that is not plain ASCII (or a space); copy it again")
        return value

    @field_validator("shards", mode="before")
    @classmethod
    def _shard_ids(cls, value: object, info: ValidationInfo) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        ids = shard_ids(value) if isinstance(value, str) else value
        count = info.data.get("shard_count")
        if count is None:
            raise ValueError("needs the shard count as well (VOICES_SHARD_COUNT, or --shard-count)")
        if isinstance(ids, Iterable) and (beyond := [i for i in ids if isinstance(i, int) and i >= count]):
            raise ValueError(
                f"shard {beyond[0]} is not below the shard count {count}; shards are 0 to {count - 1}"
            )
        return ids

    @field_validator("database", mode="before")
    @classmethod
    def _check_database(cls, value: str | Path) -> str:
        value = str(value)
        try:
            address(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("openrouter_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_base_url(value)

    def engine_config(self, read_pace: float = TERMINAL_READ_PACE) -> EngineConfig:
        """Return the engine's share of the settings as plain values; `read_pace` is the front
        end's own, which VOICES_READ_PACE overrides."""
        key = self.openrouter_api_key
        providers, error = self._providers()
        return EngineConfig(
            database=address(self.database),
            base_url=self.openrouter_base_url,
            api_key=key.get_secret_value() if key else None,
            max_rounds=self.max_rounds,
            max_budget=self.max_budget,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            read_pace=read_pace if self.read_pace is None else self.read_pace,
            catalogue_ttl=timedelta(hours=self.catalogue_ttl_hours),
            providers=providers,
            providers_error=error,
            tuning=self.tuning(),
            install_advice=IMAGE_ADVICE if self.image else INSTALL,
        )

    def _providers(self) -> tuple[tuple[ProviderSpec, ...], str | None]:
        """Return the named servers of the persona library, or why they cannot be read: a broken
        file must not stop `voices list` or `show`, only what needs its personas."""
        if not self.personas_file.exists():
            return (), None
        try:
            return tuple(load_providers(self.personas_file).values()), None
        except InputError as exc:
            return (), str(exc)

    def tuning(self) -> Tuning:
        """Return how long dialogues are cached, compacted and watched for loops."""
        return Tuning(
            cache_breakpoint_models=tuple(
                p.strip() for p in self.cache_breakpoint_models.split(",") if p.strip()
            ),
            keep_recent=self.keep_recent,
            human_timeout=self.human_timeout,
            lease_seconds=self.lease_seconds,
            summary_max_tokens=self.summary_max_tokens,
            loops=LoopThresholds(
                similarity=self.loop_similarity,
                window=self.loop_window,
                repeats=self.loop_repeats,
                farewells=self.loop_farewells,
            ),
        )

    def guild_defaults(self) -> GuildPolicy:
        """Return the policy of a guild that has set nothing itself."""
        return GuildPolicy(
            max_rounds=self.max_rounds,
            max_budget=self.max_budget,
            daily_cap_guild=self.daily_cap_guild,
            daily_cap_member=self.daily_cap_member,
            max_concurrent=self.max_concurrent,
            reasoning=self.reasoning,
            polls=self.polls,
            poll_hours=self.poll_hours,
        )
