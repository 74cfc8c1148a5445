"""The deployment files say what the code does: compose.yaml's processes are commands `voices`
takes, every long-running one restarts and is health-checked, and all share one PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.cli import build_parser
from bot.database import address

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_runs_postgresql_a_gateway_and_two_workers():
    services = compose()["services"]
    assert set(services) == {"postgres", "gateway", "worker"}
    assert services["gateway"]["command"] == ["bot", "--gateway-only"]
    assert services["worker"]["command"] == ["worker"] and services["worker"]["deploy"]["replicas"] == 2
    for name in ("gateway", "worker"):
        # Each command is one the image's entry point (`voices`) takes.
        assert build_parser().parse_args(services[name]["command"]).command == services[name]["command"][0]
        # As compose fills it in from .env.
        url = re.sub(
            r"\$\{POSTGRES_PASSWORD[^}]*\}", "s3cret", services[name]["environment"]["VOICES_DATABASE"]
        )
        assert address(url).kind == "postgresql" and "@postgres:5432/voices" in url
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name


def test_every_process_is_health_checked():
    services = compose()["services"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    # The gateway and the workers use the image's HEALTHCHECK, which asks /healthz.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "VOICES_METRICS_PORT=8080" in dockerfile


def test_the_password_comes_from_the_environment_never_the_file():
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert "${POSTGRES_PASSWORD:?" in text
    assert compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
