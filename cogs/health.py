"""The optional HTTP endpoint (VOICES_METRICS_PORT): /healthz for container health checks and
/metrics for Prometheus, served from the bot's own event loop by aiohttp (discord.py's HTTP library).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from bot.metrics import Metrics
from bot.store import Store

log = logging.getLogger(__name__)


class RateLimitCounter(logging.Handler):
    """Count discord.py's own reports of a 429: it waits and retries by itself, and says so in its
    log (for the bot's requests and for webhooks alike), which is the one place it is visible."""

    def __init__(self, metrics: Metrics):
        super().__init__(logging.WARNING)
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        if "rate limited" in record.getMessage():
            self._metrics.discord_rate_limited.inc()


class Health:
    """Serve /healthz and /metrics until stopped."""

    def __init__(
        self,
        metrics: Metrics,
        store: Store,
        connected: Callable[[], bool],
        running: Callable[[], int],
        worker: bool = False,
    ):
        self._link = "logged in to Discord" if worker else "connected to the Discord gateway"
        self._metrics = metrics
        self._store = store
        self._connected = connected
        self._running = running
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port."""
        app = web.Application()
        app.add_routes([web.get("/healthz", self._healthz), web.get("/metrics", self._exposition)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("health and metrics on http://%s:%s/", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        """200 while Discord is reached (the gateway; a worker's login) and the database answers;
        503 saying which is not."""
        problems = []
        if not self._connected():
            problems.append(f"not {self._link}")
        try:
            await self._store.fetchall("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - any failure of the database is an unhealthy answer
            problems.append(f"the database does not answer ({type(exc).__name__})")
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def _exposition(self, request: web.Request) -> web.Response:
        running = self._running()
        self._metrics.running.set(running)
        self._metrics.leases.set(running)  # each dialogue a process runs, it runs under its lease
        return web.Response(body=self._metrics.exposition(), content_type="text/plain", charset="utf-8")
