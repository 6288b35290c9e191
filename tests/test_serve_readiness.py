"""Probes of one server process: ``/ready`` 503 until loaded and while draining, ``/health`` stays live; the queue
gauges autoscalers read. Real uvicorn on loopback, the real SIGTERM path (``DrainingServer.handle_exit``)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pplx_embed.serve.app import ServeConfig, create_app
from pplx_embed.serve.http import uvicorn_config
from pplx_embed.serve.readiness import DrainingServer
from test_serve import metric


def start(config: ServeConfig, drain_seconds: float) -> tuple[str, DrainingServer, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    app = create_app(config)
    server = DrainingServer(uvicorn_config(app, log_level="warning", timeout_graceful_shutdown=30),
                            app.state.service.readiness, drain_seconds)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def get(url: str) -> httpx.Response:
    while True:
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            time.sleep(0.01)


def test_ready_is_503_until_loaded_then_while_draining(tiny_pplx_dir, tiny_pplx):
    url, server, thread = start(ServeConfig(models=[("tiny", str(tiny_pplx_dir))]), drain_seconds=2.0)
    try:
        # loading a checkpoint takes far longer than starting to listen: the first answers are 503
        ready, health = get(url + "/ready"), get(url + "/health")
        assert ready.status_code == 503 and ready.json() == {"status": "loading", "replicas": 1}
        assert ready.headers["retry-after"] == "5"
        # the load may end between the two requests on an idle machine: liveness says loading or ok, never else
        assert (health.status_code, health.json()["status"]) in {(503, "loading"), (200, "ok")}
        while get(url + "/ready").status_code != 200:
            time.sleep(0.02)
        assert get(url + "/ready").json() == {"status": "ready", "replicas": 1}
        assert get(url + "/health").json() == {"status": "ok", "models": ["tiny"], "replicas": 1}

        server.handle_exit(signal.SIGTERM, None)  # what the SIGTERM handler calls
        began = time.monotonic()
        ready = get(url + "/ready")
        assert ready.status_code == 503 and ready.json() == {"status": "draining", "replicas": 1}
        health = get(url + "/health")  # alive: a liveness probe must not restart a draining server
        assert health.status_code == 200 and health.json()["status"] == "draining"
        # still serving while load balancers move away
        r = httpx.post(url + "/v1/embeddings", json={"input": ["still served"], "model": "tiny"}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - began < 2.0
        thread.join(30)
        assert not thread.is_alive() and time.monotonic() - began >= 2.0  # then it shut down
    finally:
        server.should_exit = True
        thread.join(30)


def test_drain_finishes_requests_in_flight(minilm):
    url, server, thread = start(ServeConfig(models=[("minilm", minilm)], warmup=False), drain_seconds=0.5)
    try:
        while get(url + "/ready").status_code != 200:
            time.sleep(0.02)
        texts = ["finish me " * 40] * 64
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(httpx.post, url + "/v1/embeddings", json={"input": texts}, timeout=120)
                     for _ in range(4)]
            # what an autoscaler reads (KEDA on the queue gauges): tokens waiting, requests admitted
            deadline = time.monotonic() + 30
            while not (metric(url, "pplx_queue_tokens", model="minilm") > 0
                       and metric(url, "pplx_requests_in_flight", model="minilm") >= 2):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            server.handle_exit(signal.SIGTERM, None)
            answers = [c.result() for c in calls]
        assert [a.status_code for a in answers] == [200] * 4
        assert all(len(a.json()["data"]) == 64 for a in answers)
        thread.join(60)
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(30)


def test_drain_seconds_flag(capsys):
    from pplx_embed.cli import main

    assert main(["serve", "--model", "minilm", "--drain-seconds", "-1"]) == 2
    assert "--drain-seconds must be a number at least 0" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--replicas", "0"], "--replicas must be an integer at least 1"),
    (["--autoscale", "3"], "--autoscale must be MIN:MAX"),
    (["--autoscale", "3:2"], "needs 1 <= MIN <= MAX"),
    (["--autoscale", "1:2", "--replicas", "3"], "--replicas 3 must lie within --autoscale 1:2"),
    (["--replicas", "2", "--port", "0"], "--port 0 cannot be used with replicas"),
    (["--replicas", "2", "--target-ongoing-requests", "0"], "--target-ongoing-requests must be a number"),
])
def test_bad_replica_flags_are_one_line_errors(flags, message, capsys):
    pytest.importorskip("ray.serve")
    from pplx_embed.cli import main

    assert main(["serve", "--model", "minilm", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
