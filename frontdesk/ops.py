"""A gateway's or worker's operations endpoint, on ``FRONTDESK_METRICS_HOST``:
``FRONTDESK_METRICS_PORT`` (aiohttp), apart from the webhooks' port so that it need not face
the internet:

- ``/healthz``: the process is alive (200 while its event loop answers);
- ``/readyz``: everything it needs answers (Redis, the database, and a worker's engine): 200,
  or 503 naming what does not, each check bounded by ``CHECK_TIMEOUT_S``;
- ``/metrics``: Prometheus' text format, ``frontdesk.metrics`` and the in-process vLLM engine's
  own, with the queue's figures and readiness read at the scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from frontdesk import metrics
from frontdesk.errors import FrontdeskError

log = logging.getLogger(__name__)
CHECK_TIMEOUT_S = 2.0

Check = Callable[[], Awaitable[object]]


class OpsServer:
    """Serves the three endpoints; ``checks`` are what readiness needs, by name."""

    def __init__(self, host: str, port: int, checks: Mapping[str, Check]) -> None:
        self.host, self.port = host, port
        self.checks = dict(checks)
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_get("/readyz", self._ready)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = cast(asyncio.Server, site._server)
        self.port = server.sockets[0].getsockname()[1]  # the one it got, when asked for 0
        log.info("metrics and health checks on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def readiness(self) -> dict[str, str]:
        """Each check's outcome, "ok" or why not; run side by side."""
        names = list(self.checks)
        outcomes = await asyncio.gather(*(self._check(self.checks[n]) for n in names))
        found = dict(zip(names, outcomes, strict=True))
        metrics.READY.set(all(outcome == "ok" for outcome in found.values()))
        return found

    async def _check(self, check: Check) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await check()
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_S:g}s"
        except FrontdeskError as exc:  # their messages hide passwords
            return str(exc) or type(exc).__name__
        except Exception as exc:  # anything else: its kind only, in case it holds a secret
            return type(exc).__name__
        return "ok"

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _ready(self, _request: web.Request) -> web.Response:
        found = await self.readiness()
        ready = all(outcome == "ok" for outcome in found.values())
        return web.json_response({"ready": ready, "checks": found}, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        await self.readiness()  # reads the queue's figures too (the Redis check)
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
