"""Liveness and readiness (``GET /health``, ``GET /ready``) and the drain that comes before a shutdown.

* ``/health`` (liveness): 200 once every model is loaded and warmed (``"status": "ok"``, ``"draining"`` while
  draining), 503 while loading or after a failed load (``"failed: ..."``): restart a server that fails it.
* ``/ready`` (readiness): 200 only while the server should get traffic: loaded, warmed and not draining.

Both report ``replicas``: 1 for one process; under Ray Serve, the replicas running (:mod:`.replicas`).

On SIGTERM a server first *drains*: ``/ready`` answers 503 for ``drain_seconds`` while every request is still
served, so load balancers (a Kubernetes Service, a cloud load balancer) stop sending new ones; then the graceful
shutdown stops accepting connections, finishes the requests in flight and exits. Ctrl-C skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

import uvicorn
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

log = logging.getLogger("pplx_embed.serve")

RETRY_AFTER = {"Retry-After": "5"}


class Readiness:
    """Where a server is: loading → loaded (or failed) → draining. ``replicas`` counts the serving replicas."""

    def __init__(self, replicas: Callable[[], int] | None = None):
        self.models: list[str] | None = None
        self.failure: BaseException | None = None
        self.draining = False
        self._replicas = replicas
        self._settled = threading.Event()  # loaded or failed

    def loaded(self, models: list[str]) -> None:
        self.models = list(models)
        self._settled.set()

    def failed(self, exc: BaseException) -> None:
        self.failure = exc
        self._settled.set()

    def drain(self) -> None:
        """From now on ``/ready`` answers 503 (requests are still served)."""
        self.draining = True

    async def settled(self) -> None:
        """Return once loading has ended, with the models or with a failure."""
        await asyncio.get_running_loop().run_in_executor(None, self._settled.wait)

    async def replicas(self) -> int:
        return 1 if self._replicas is None else await run_in_threadpool(self._replicas)

    def router(self) -> APIRouter:
        """``GET /health`` and ``GET /ready``, open without an API key."""
        router = APIRouter()

        @router.get("/health")
        async def health():
            """Liveness: 200 once every model is loaded and warmed up (also while draining), else 503."""
            replicas = await self.replicas()
            if self.models is None:
                status = f"failed: {self.failure}" if self.failure else "loading"
                return JSONResponse({"status": status, "replicas": replicas}, 503, headers=RETRY_AFTER)
            return {"status": "draining" if self.draining else "ok", "models": self.models, "replicas": replicas}

        @router.get("/ready")
        async def ready():
            """Readiness: 200 while the server takes traffic (loaded, not draining), else 503."""
            replicas = await self.replicas()
            if self.models is None or self.draining:
                status = "draining" if self.draining else f"failed: {self.failure}" if self.failure else "loading"
                return JSONResponse({"status": status, "replicas": replicas}, 503, headers=RETRY_AFTER)
            return {"status": "ready", "replicas": replicas}

        return router


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains on SIGTERM: ``/ready`` 503 for ``drain_seconds``, then the graceful shutdown
    (a second SIGTERM, or Ctrl-C, starts it at once)."""

    def __init__(self, config: uvicorn.Config, readiness: Readiness, drain_seconds: float = 0.0):
        super().__init__(config)
        self.readiness, self.drain_seconds = readiness, drain_seconds

    def handle_exit(self, sig: int, frame) -> None:
        first = not self.readiness.draining
        self.readiness.drain()
        if first and sig == signal.SIGTERM and self.drain_seconds > 0:
            log.info("draining: /ready answers 503; shutting down in %g s", self.drain_seconds)
            timer = threading.Timer(self.drain_seconds, uvicorn.Server.handle_exit, (self, sig, frame))
            timer.daemon = True
            timer.start()
            return
        super().handle_exit(sig, frame)
