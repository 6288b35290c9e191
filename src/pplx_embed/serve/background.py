"""Run the server in a background thread of the current process (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from pplx_embed.serve.app import ServeConfig, create_app
from pplx_embed.serve.http import uvicorn_config


@contextmanager
def serve_in_thread(config: ServeConfig, host: str = "127.0.0.1", port: int = 0,
                    ready_timeout: float = 300.0) -> Iterator[tuple[str, uvicorn.Server]]:
    """Yield ``(base_url, server)`` once ``/health`` is 200; stop gracefully on exit.

    ``port=0`` binds a free port. Setting ``server.should_exit = True`` starts a graceful shutdown.
    """
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on such sockets (else ~40 ms per keep-alive reply)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn_config(create_app(config), config.limits, log_level="warning",
                                           timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pplx-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                if health.status_code == 200:
                    break
                if health.json().get("status", "").startswith("failed"):
                    raise RuntimeError(f"server could not start: {health.json()['status']}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"server at {url} did not become ready")
            time.sleep(0.05)
        yield url, server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
