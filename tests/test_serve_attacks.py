"""The server under attack and misuse, run for real (uvicorn on 127.0.0.1): each defect of issue 14 as a regression.

Memory exhaustion by huge texts, head-of-line blocking by a max-size request, 500s that dropped the
connection, auth after the body, unknown served names, malformed and incomplete HTTP.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from pplx_embed.errors import InputError
from pplx_embed.model.pooling import Sequence
from pplx_embed.serve.app import ServeConfig
from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.background import serve_in_thread
from pplx_embed.serve.limits import ServeLimits
from pplx_embed.serve.registry import model_names
from pplx_embed.serve.scheduler import Scheduler


def assert_error(status: int, body: bytes | dict, want: int, code: str, contains: str = "") -> None:
    error = (json.loads(body) if isinstance(body, bytes) else body)["error"]
    assert status == want and error["code"] == code and contains in error["message"], (status, error)


class Connection:
    """One HTTP/1.1 connection: every request must come back on the same socket (keep-alive kept)."""

    def __init__(self, url: str, headers: dict | None = None):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.conn.connect()
        self.sock, self.headers = self.conn.sock, headers or {}

    def post(self, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, bytes, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.conn.request("POST", path, data, {"Content-Type": "application/json", **self.headers, **(headers or {})})
        response = self.conn.getresponse()
        payload = response.read()
        assert self.conn.sock is self.sock, f"{response.status} closed the connection"
        return response.status, payload, dict(response.getheaders())

    def close(self) -> None:
        self.conn.close()


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def rss() -> int:
    """Resident memory of this process (the server runs in it), bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- memory: huge texts are refused (or cut) before tokenizing ---------------------------------------
def test_concurrent_huge_texts_keep_memory_bounded(minilm):
    """Six concurrent 16 MB single-text requests once took the server from 0.5 to 11.7 GB."""
    big = "lorem ipsum dolor sit amet " * (16_000_000 // 27)
    bodies = [json.dumps({"input": big}).encode(), json.dumps({"inputs": big, "truncate": True}).encode()]
    with serve_in_thread(ServeConfig(models=[("minilm", minilm)], warmup=False)) as (url, _):
        peak, done = [rss()], threading.Event()
        before = peak[0]

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda i: httpx.post(url + ("/v1/embeddings", "/embed")[i % 2],
                                                             content=bodies[i % 2], timeout=120,
                                                             headers={"content-type": "application/json"}),
                                        range(6)))
        finally:
            done.set()
            sampler.join()
        for i, r in enumerate(answers):
            if i % 2 == 0:  # refused before tokenizing: it is over 16 characters per token of the context
                assert_error(r.status_code, r.json(), 413, "too_many_tokens", "characters")
            else:  # truncate: cut to the context's characters, then tokenized and truncated as asked
                assert r.status_code == 200 and r.headers["x-compute-tokens"] == "256"
                assert np.allclose(r.json()[0], minilm.encode(big[: minilm.max_chars], truncation="right"),
                                   atol=1e-5)
        grown = (peak[0] - before) / 2**20
        # 6 bodies of 16 MB held as bytes, str and parsed JSON at once: ~0.4 GB; unbounded tokenizing took 11 GB
        assert grown < 1024, f"the server grew by {grown:.0f} MiB"


def test_character_cap_matches_the_python_api(minilm):
    """Under the cap nothing changes; over it the Python API refuses or cuts exactly as the server does."""
    text = "word " * 10_000  # 50,000 characters > 256 x 16
    with pytest.raises(ValueError, match="characters"):
        minilm.tokenize([text])
    assert minilm.tokenize([text], truncation="right") == minilm.tokenize([text[: minilm.max_chars]],
                                                                         truncation="right")
    assert minilm.tokenize([text], truncation="left")[0][1:-1] == minilm.tokenize(
        [text[-minilm.max_chars :]], truncation="left")[0][1:-1]
    assert minilm.count_tokens([text]) == [10_002]  # counting is never capped


# ---- fairness: a max-size request never starves small ones --------------------------------------------
def test_scheduler_interleaves_a_big_request_with_small_ones(tiny_pplx):
    """On the real engine: small requests queued behind a big one finish long before it."""
    ids = tiny_pplx.tokenize(["a sentence of several words " * 40])[0][:200]
    big = [Sequence(list(ids)) for _ in range(200)]  # 40,000 tokens = 40 steps of 1,000
    small = [Sequence(tiny_pplx.tokenize(["a short query"])[0])]

    async def main():
        scheduler = Scheduler("tiny", tiny_pplx.engine, max_step_tokens=1000, max_batch_requests=256,
                              max_concurrent_requests=8, max_queue_tokens=10**6)
        order, steps = [], []
        scheduler.observer = lambda requests, tokens, seconds: steps.append(requests)

        async def run(name, sequences):
            pooled, timing = await scheduler.run(sequences)
            order.append(name)
            return pooled, timing

        big_task = asyncio.ensure_future(run("big", big))
        await asyncio.sleep(0)
        results = []
        for i in range(5):  # one after another, each while the big request is being computed
            results.append(await run(f"small{i}", small))
        big_pooled, big_timing = await big_task
        await scheduler.close()
        return order, steps, results, big_pooled, big_timing

    order, steps, results, big_pooled, big_timing = asyncio.run(main())
    assert order == ["small0", "small1", "small2", "small3", "small4", "big"]
    assert len(steps) >= 40 and max(steps) == 2  # every small request shared a step with the big one
    expected = tiny_pplx.engine.run(small)[0]
    assert all(np.array_equal(pooled[0], expected) for pooled, _ in results)
    assert np.array_equal(np.concatenate(big_pooled), np.concatenate(tiny_pplx.engine.run(big)))
    assert big_timing.tokens == 40_000 and [t.tokens for _, t in results] == [len(small[0].ids)] * 5


def test_small_requests_progress_while_a_max_size_request_runs(tiny_pplx):
    """Over HTTP: a 117,760-token request (512 texts) is split into steps; short queries are answered between them."""
    limits = ServeLimits(max_step_tokens=1024)
    with serve_in_thread(ServeConfig(models=[("tiny", tiny_pplx)], limits=limits, warmup=False)) as (url, _):
        texts = [f"passage {i}: " + "several more words " * 72 for i in range(512)]
        tokens = sum(tiny_pplx.count_tokens(texts))
        assert 100_000 < tokens <= 120_000
        big = ThreadPoolExecutor(1).submit(httpx.post, url + "/v1/embeddings", json={"input": texts}, timeout=300)
        with httpx.Client(base_url=url, timeout=120) as client:
            while "pplx_requests_running{model=\"tiny\"} 1.0" not in client.get("/metrics").text:
                assert not big.done(), big.result().text
                time.sleep(0.005)
            answered = []
            for i in range(8):
                r = client.post("/v1/embeddings", json={"input": f"short query {i}"})
                assert r.status_code == 200
                answered.append(big.done())
                assert r.headers["x-compute-tokens"] == str(tiny_pplx.count_tokens(f"short query {i}")[0])
        r = big.result()
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == tokens
    assert not any(answered), "a short query waited for the whole max-size request"


# ---- errors: JSON, keep-alive, logged ------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(minilm, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    keys_file.write_text(json.dumps({"sk-minilm": ["minilm"], "sk-all": "*"}))
    config = ServeConfig(models=[(None, "minilm")], keys=KeyRing.from_options(None, str(keys_file)),
                         limits=ServeLimits(read_timeout=1.0), warmup=False)
    with serve_in_thread(config) as (url, _):
        yield url


def test_auth_comes_before_the_body(keyed):
    conn = Connection(keyed)
    try:
        status, body, _ = conn.post("/v1/embeddings", b"{")
        assert_error(status, body, 401, "missing_api_key")
        status, body, _ = conn.post("/v1/embeddings", b"{", {"Authorization": "Bearer sk-all"})
        assert_error(status, body, 400, "invalid_json")
    finally:
        conn.close()
    # a huge announced body is refused without waiting for a byte of it
    host, port = keyed.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")
        answer = until_closed(sock)  # then closed by the read timeout: the body never came
    assert answer.startswith(b"HTTP/1.1 401") and b'"missing_api_key"' in answer


def test_served_names_aliases_and_scoped_keys(keyed, minilm):
    """``--model minilm`` answers to "minilm" and to the model's own name; a key scoped to minilm grants both."""
    conn = Connection(keyed, {"Authorization": "Bearer sk-minilm"})
    try:
        for name in ("minilm", minilm.name):
            status, body, _ = conn.post("/v1/embeddings", {"input": "hi", "model": name})
            assert status == 200 and json.loads(body)["model"] == "minilm"
        status, body, _ = conn.post("/v1/embeddings", {"input": "hi", "model": "pplx-embed-v1-0.6b"})
        assert_error(status, body, 404, "model_not_found", "minilm")
    finally:
        conn.close()
    listed = httpx.get(keyed + "/v1/models", headers={"Authorization": "Bearer sk-minilm"}).json()["data"]
    assert [(m["id"], m["aliases"]) for m in listed] == [("minilm", [minilm.name])]
    assert model_names("query", "/ckpt", "perplexity-ai/pplx-embed-v1-0.6b") == [
        "query", "/ckpt", "perplexity-ai/pplx-embed-v1-0.6b", "pplx-embed-v1-0.6b"]
    assert model_names("pplx-embed-context-v1-4b", "pplx-embed-context-v1-4b", "pplx-embed-context-v1-4b")[-1] == \
        "perplexity-ai/pplx-embed-context-v1-4b"


def test_malformed_and_incomplete_http_get_json(keyed):
    host, port = keyed.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GARBAGE \x00\x01 NOT HTTP\r\n\r\n")
        answer = until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["code"] == "invalid_http"
    headers_only = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"  # headers never finish
    body_cut = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-all\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": ")  # nor the body
    for partial in (headers_only, body_cut):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(partial)
            answer = until_closed(sock)  # the server answers after its 1 s read timeout and closes
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "read_timeout"
    assert httpx.get(keyed + "/health").status_code == 200


def test_unexpected_errors_are_json_500_logged_and_keep_the_connection(minilm, tmp_path, caplog):
    """A store broken under the server is the operator's problem, not the client's: a logged JSON 500."""
    from pplx_embed.index import Index

    path = tmp_path / "ix"
    with Index.create(str(path), minilm.name, embedder=minilm) as ix:
        ix.add(["Paris is the capital of France."], ids=["p"])
    config = ServeConfig(models=[("minilm", minilm)], indexes=[("docs", str(path))], warmup=False)
    with serve_in_thread(config) as (url, _):
        conn = Connection(url)
        try:
            status, body, _ = conn.post("/v1/indexes/docs/search", {"query": "capital"})
            assert status == 200 and json.loads(body)["data"][0]["hits"][0]["id"] == "p"
            database = next(p for p in path.iterdir() if p.suffix == ".sqlite")
            database.write_bytes(b"not a database" * 1000)
            status, body, _ = conn.post("/v1/indexes/docs/search", {"query": "capital"})
            assert_error(status, body, 500, "index_damaged", "damaged")
            status, body, _ = conn.post("/v1/embeddings", {"input": "still served", "encoding_format": "float"})
            assert status == 200 and np.allclose(json.loads(body)["data"][0]["embedding"],
                                                 minilm.encode("still served"), atol=1e-6)
        finally:
            conn.close()
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records if r.levelname == "ERROR")


def test_user_errors_keep_the_connection(keyed):
    conn = Connection(keyed, {"Authorization": "Bearer sk-all"})
    try:
        for body, status, code in (({"input": ""}, 400, "empty_input"), ({"input": "a", "dimensions": 7}, 400,
                                                                          "invalid_value"),
                                   ({"input": "a", "model": "nope"}, 404, "model_not_found"),
                                   ({"input": 3}, 422, "invalid_schema"), (b"[", 400, "invalid_json"),
                                   ({"input": "x" * 5000}, 413, "too_many_tokens")):
            got, payload, _ = conn.post("/v1/embeddings", body)
            assert_error(got, payload, status, code)
        got, payload, headers = conn.post("/v1/embeddings", {"input": "fine"})
        assert got == 200 and {"x-queue-time", "x-inference-time", "x-tokenization-time", "x-compute-tokens"} <= set(
            headers)
    finally:
        conn.close()


# ---- the command line -----------------------------------------------------------------------------
def test_cli_refuses_bad_limits_with_one_line(tmp_path):
    from pplx_embed.cli import build_parser
    from pplx_embed.cli.serve import build_config

    args = build_parser().parse_args(["serve", "--model", "minilm", "--backend", "torch", "--dtype", "float32",
                                      "--max-batch-tokens", "2048", "--max-queue-tokens", "5000"])
    config = build_config(args)
    assert config.options.backend == "torch" and config.options.dtype == "float32"
    assert config.options.max_batch_tokens == 2048 and config.limits.max_queue_tokens == 5000
    for bad, message in ((["--port", "http"], "--port"), (["--payload-limit", "0"], "--payload-limit"),
                         (["--request-timeout", "nan"], "--request-timeout"), (["--port", "-1"], "--port")):
        with pytest.raises(InputError, match=message):
            build_config(build_parser().parse_args(["serve", "--model", "minilm", *bad]))
    run = subprocess.run([sys.executable, "-m", "pplx_embed.cli", "serve", "--model", "minilm", "--port", "70000"],
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "--port must be an integer between 0 and 65535" in run.stderr.strip().splitlines()[-1]
