"""Settings read from the environment and `.env`, built once at start-up and passed down as values."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent


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
    database: Path = Path("data/voices.db")
    transcripts_dir: Path = Path("transcripts")
    personas_file: Path = CONFIG_DIR / "personas.toml"

    default_rounds: int = Field(default=6, ge=1)
    max_rounds: int = Field(default=50, ge=1)
    default_budget: Decimal = Field(default=Decimal("0.10"), gt=0)
    max_budget: Decimal = Field(default=Decimal("5.00"), gt=0)
    default_max_tokens: int = Field(default=2048, ge=16)
    max_seconds: float | None = Field(default=3600.0, gt=0)
    max_total_tokens: int | None = Field(default=None, ge=1)

    connect_timeout: float = Field(default=10.0, gt=0)
    # Reasoning models may send nothing but keep-alive comments for minutes; reads wait this long.
    read_timeout: float = Field(default=300.0, gt=0)
    catalogue_ttl_hours: float = Field(default=24.0, ge=0)
    log_level: str = "WARNING"

    @field_validator("openrouter_api_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("openrouter_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")
