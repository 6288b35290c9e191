"""The embedding server, run for real (uvicorn on 127.0.0.1, a free port) with MiniLM and a tiny pplx model."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pplx_embed.errors import InputError
from pplx_embed.serve.app import ServeConfig
from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.background import serve_in_thread
from pplx_embed.serve.limits import ServeLimits

TEXTS = ["What is late chunking?", "Binary embeddings are 32x smaller than float32 ones.",
         "Le chat dort sur le canapé.", "int8 = round(tanh(x) * 127)"]


@pytest.fixture(scope="module")
def server(minilm, tiny_pplx):
    config = ServeConfig(models=[("minilm", minilm), ("tiny", tiny_pplx), ("tiny-b", tiny_pplx),
                                 ("minilm-b", minilm)],
                         splits={"ab": [("minilm", 1), ("tiny", 1)]},
                         shadows={"tiny": "tiny-b", "minilm-b": "tiny"})
    with serve_in_thread(config) as (url, _):
        yield url


def post(url: str, path: str, body, **kw) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        headers = {"content-type": "application/json", **kw.pop("headers", {})}
        return httpx.post(url + path, content=body, headers=headers, timeout=60, **kw)
    return httpx.post(url + path, json=body, timeout=60, **kw)


def decode(item: dict, fmt: str) -> np.ndarray:
    dtype = {"base64_int8": np.int8, "base64_binary": np.uint8, "base64": "<f4"}[fmt]
    return np.frombuffer(base64.b64decode(item["embedding"]), dtype=dtype)


def metric(url: str, name: str, **labels) -> float:
    """Value of one sample of /metrics (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def assert_error(response: httpx.Response, status: int, code: str | None = None, contains: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    if code:
        assert error["code"] == code
    assert contains in error["message"]
    return error


# ---- schema and exact results -------------------------------------------------------------------
@pytest.mark.parametrize("model", ["minilm", "tiny"])
@pytest.mark.parametrize("fmt,quantization", [("base64_int8", "int8"), ("base64_binary", "binary")])
def test_embeddings_equal_python_api_byte_for_byte(server, request, model, fmt, quantization):
    emb = request.getfixturevalue({"minilm": "minilm", "tiny": "tiny_pplx"}[model])
    r = post(server, "/v1/embeddings", {"input": TEXTS, "model": model, "encoding_format": fmt})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == model
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    tokens = sum(emb.count_tokens(TEXTS))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    expected = emb.encode(TEXTS, quantization=quantization)
    got = np.stack([decode(d, fmt) for d in body["data"]])
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


def test_default_format_single_string_and_dimensions(server, minilm):
    r = post(server, "/v1/embeddings", {"input": TEXTS[0], "model": "minilm", "dimensions": 128})
    (item,) = r.json()["data"]
    assert decode(item, "base64_int8").tobytes() == minilm.encode([TEXTS[0]], "int8", dimensions=128)[0].tobytes()
    r = post(server, "/v1/embeddings", {"input": TEXTS, "model": "minilm", "dimensions": 256,
                                         "encoding_format": "base64_binary"})
    assert [len(decode(d, "base64_binary")) for d in r.json()["data"]] == [32] * len(TEXTS)
    r = post(server, "/v1/embeddings", {"input": TEXTS[:2]})  # no model: the first served one
    assert r.json()["model"] == "minilm"


def test_openai_float_and_base64_formats(server, tiny_pplx):
    expected = tiny_pplx.encode(TEXTS, quantization="float")
    r = post(server, "/v1/embeddings", {"input": TEXTS, "model": "tiny", "encoding_format": "float"})
    assert np.array_equal(np.array([d["embedding"] for d in r.json()["data"]], np.float32), expected)
    r = post(server, "/v1/embeddings", {"input": TEXTS, "model": "tiny", "encoding_format": "base64"})
    assert np.array_equal(np.stack([decode(d, "base64") for d in r.json()["data"]]), expected)


def test_openai_client_embeddings_create(server, minilm):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    expected = minilm.encode(TEXTS, quantization="float")
    result = client.embeddings.create(model="minilm", input=TEXTS)  # sends encoding_format="base64"
    assert result.model == "minilm" and result.usage.prompt_tokens == sum(minilm.count_tokens(TEXTS))
    assert np.array_equal(np.array([d.embedding for d in result.data], np.float32), expected)
    floats = client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    assert np.array_equal(np.array(floats.data[0].embedding, np.float32), minilm.encode(TEXTS[0]))


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_contextual_equals_encode_contextual(server, request, model):
    emb = request.getfixturevalue({"minilm": "minilm", "tiny": "tiny_pplx"}[model])
    docs = [["Paris is the capital.", "It has 2 million people.", ""], ["A lone chunk."]]
    for fmt, quantization in (("base64_int8", "int8"), ("base64_binary", "binary")):
        r = post(server, "/v1/contextualizedembeddings", {"input": docs, "model": model, "encoding_format": fmt})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = emb.encode_contextual(docs, quantization=quantization)
        assert [d["object"] for d in body["data"]] == ["contextualized_embedding"] * 2
        assert [d["index"] for d in body["data"]] == [0, 1]
        for doc, want in zip(body["data"], expected):
            assert [c["index"] for c in doc["data"]] == list(range(len(want)))
            got = np.stack([decode(c, fmt) for c in doc["data"]])
            assert got.tobytes() == want.tobytes()
        assert body["usage"]["total_tokens"] > 0


def test_tei_embed(server, tiny_pplx, minilm):
    r = post(server, "/embed", {"inputs": TEXTS, "model": "tiny"})
    vectors = np.array(r.json(), np.float32)
    assert vectors.shape == (len(TEXTS), tiny_pplx.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    raw = np.array(post(server, "/embed", {"inputs": TEXTS[0], "model": "tiny", "normalize": False}).json())
    assert raw.shape == (1, tiny_pplx.dimension)
    assert np.allclose(raw[0], tiny_pplx.encode(TEXTS[0]), atol=1e-6)
    long = "word " * 400  # MiniLM holds 256 tokens
    assert_error(post(server, "/embed", {"inputs": long}), 413, "too_many_tokens", "limit of 254")
    r = post(server, "/embed", {"inputs": [long], "truncate": True})
    assert r.status_code == 200 and r.headers["x-total-tokens"] == "256"
    assert np.allclose(r.json()[0], minilm.encode([long], truncation="right")[0], atol=1e-5)


def test_models_health_metrics(server):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and "tiny" in health["models"]
    models = {m["id"]: m for m in httpx.get(server + "/v1/models").json()["data"]}
    assert models["minilm"]["dimension"] == 384 and models["tiny"]["dimension"] == 64
    assert models["tiny"]["engine"]["backend"] == "torch"  # the test suite pins the backend (conftest)
    assert models["ab"]["split"] == {"minilm": 1, "tiny": 1}
    post(server, "/v1/embeddings", {"input": TEXTS, "model": "tiny"})
    assert metric(server, "pplx_requests_total", endpoint="/v1/embeddings", model="tiny", status="200") >= 1
    assert metric(server, "pplx_request_duration_seconds_count", endpoint="/v1/embeddings", model="tiny") >= 1
    assert metric(server, "pplx_tokens_total", model="tiny") >= sum(len(t) > 0 for t in TEXTS)
    assert metric(server, "pplx_batch_tokens_count", model="tiny") >= 1
    assert metric(server, "pplx_tokens_per_second", model="tiny") > 0
    text = httpx.get(server + "/metrics").text
    assert 'pplx_queue_depth{model="minilm"}' in text and "pplx_requests_in_flight" in text


# ---- errors ---------------------------------------------------------------------------------------
def test_request_errors(server):
    assert_error(post(server, "/v1/embeddings", b'{"input": ["a",'), 400, "invalid_json")
    assert_error(post(server, "/v1/embeddings", {"input": 5}), 422, "invalid_schema", "input")
    assert_error(post(server, "/v1/embeddings", {"input": ["a", 3]}), 422, "invalid_schema")
    assert_error(post(server, "/v1/embeddings", {"model": "tiny"}), 422, "invalid_schema", "input")
    assert_error(post(server, "/v1/embeddings", {"input": "a", "encoding_format": "int4"}), 422, "invalid_schema")
    assert_error(post(server, "/v1/embeddings", {"input": "a", "dimensions": "big"}), 422, "invalid_schema")
    assert_error(post(server, "/v1/embeddings", {"input": ["ok", ""]}), 400, "empty_input", "text 1")
    assert_error(post(server, "/v1/embeddings", {"input": "   "}), 400, "empty_input")
    assert_error(post(server, "/v1/embeddings", {"input": []}), 400, "empty_input")
    assert_error(post(server, "/v1/embeddings", {"input": "a", "dimensions": 100}), 400, "invalid_value", "128")
    assert_error(post(server, "/v1/embeddings", {"input": "a", "dimensions": 999}), 400, "invalid_value")
    assert_error(post(server, "/v1/embeddings", {"input": "a", "model": "gpt-9"}), 404, "model_not_found", "minilm")
    assert_error(post(server, "/v1/embeddings", {"input": ["x"] * 513}), 413, "too_many_inputs", "512")
    assert_error(post(server, "/v1/embeddings", {"input": ["word " * 300]}), 413, "too_many_tokens", "limit of 254")
    many = ["token " * 240] * 512  # 512 texts x 242 tokens > 120,000
    assert_error(post(server, "/v1/embeddings", {"input": many}), 413, "too_many_tokens", "120000")
    assert_error(post(server, "/v1/embeddings", {"input": "a", "dimensions": 10**30}), 400, "invalid_value")
    assert_error(post(server, "/v1/embeddings", {"input": {"text": "a"}}), 422, "invalid_schema")
    assert_error(post(server, "/v1/embeddings", b"[1, 2, 3]"), 422, "invalid_schema")
    assert_error(post(server, "/v1/embeddings", b"\xff\xfe garbage"), 400, "invalid_json")
    lone_surrogate = post(server, "/v1/embeddings", b'{"input": "broken \\ud800 text", "model": "tiny"}')
    assert_error(lone_surrogate, 400, "invalid_value", "surrogate")
    assert_error(httpx.get(server + "/v2/nothing"), 404, "not_found")
    assert_error(httpx.get(server + "/v1/embeddings"), 405, "method_not_allowed")
    assert httpx.get(server + "/health").status_code == 200  # still alive


def test_contextual_errors(server):
    path = "/v1/contextualizedembeddings"
    assert_error(post(server, path, {"input": ["not", "nested"]}), 422, "invalid_schema")
    assert_error(post(server, path, {"input": []}), 400, "empty_input")
    assert_error(post(server, path, {"input": [["a"], []]}), 400, "empty_input", "document 1")
    assert_error(post(server, path, {"input": [["a"]] * 513}), 413, "too_many_inputs", "512")
    assert_error(post(server, path, {"input": [["a"] * 8001, ["b"] * 8000]}), 413, "too_many_inputs", "16000")
    big_doc = ["token " * 250] * 140  # ~35,000 tokens in one document
    assert_error(post(server, path, {"input": [big_doc], "model": "tiny"}), 413, "too_many_tokens", "32768")
    too_long_chunk = post(server, path, {"input": [["word " * 300]], "model": "minilm"})
    assert_error(too_long_chunk, 413, "too_many_tokens", "limit of 254")
    assert_error(post(server, path, {"input": [["a"]], "dimensions": 7}), 400, "invalid_value")


# ---- routing: split alias and shadow -----------------------------------------------------------
def test_split_alias_routes_between_models(server, minilm, tiny_pplx):
    expected = {"minilm": minilm.encode(TEXTS[:1], "int8"), "tiny": tiny_pplx.encode(TEXTS[:1], "int8")}
    seen = set()
    for _ in range(16):
        body = post(server, "/v1/embeddings", {"input": TEXTS[:1], "model": "ab"}).json()
        seen.add(body["model"])
        assert decode(body["data"][0], "base64_int8").tobytes() == expected[body["model"]][0].tobytes()
    assert seen == {"minilm", "tiny"}
    assert metric(server, "pplx_split_requests_total", alias="ab", model="tiny") >= 1


def wait_metric(url: str, name: str, minimum: float, **labels) -> float:
    deadline = time.monotonic() + 20
    while (value := metric(url, name, **labels)) < minimum and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_shadow_records_agreement(server):
    labels = {"primary": "tiny", "candidate": "tiny-b"}
    count = metric(server, "pplx_shadow_cosine_count", **labels)
    total = metric(server, "pplx_shadow_cosine_sum", **labels)
    r = post(server, "/v1/embeddings", {"input": TEXTS, "model": "tiny", "encoding_format": "float"})
    assert r.status_code == 200 and r.json()["model"] == "tiny"
    assert wait_metric(server, "pplx_shadow_cosine_count", count + 1, **labels) == count + 1
    cosine = metric(server, "pplx_shadow_cosine_sum", **labels) - total
    assert cosine == pytest.approx(1.0, abs=1e-5)  # the same weights agree
    # models of different dimensions: only the similarity-structure agreement is defined
    post(server, "/v1/embeddings", {"input": TEXTS, "model": "minilm-b", "encoding_format": "base64_binary"})
    assert wait_metric(server, "pplx_shadow_similarity_correlation_count", 1, primary="minilm-b",
                       candidate="tiny") == 1
    assert metric(server, "pplx_shadow_cosine_count", primary="minilm-b", candidate="tiny") == 0
    assert metric(server, "pplx_shadow_requests_total", primary="minilm-b", candidate="tiny", outcome="ok") == 1


# ---- concurrency, back-pressure, timeouts, disconnects, shutdown ------------------------------
def test_concurrent_requests_each_get_their_own_answer(server, minilm, tiny_pplx):
    jobs = [("minilm" if i % 3 else "tiny",
             [f"request {i} asks about topic {i * 7}", f"and {i} more words " * (i % 5 + 1)]) for i in range(24)]
    calls = metric(server, "pplx_batch_requests_count", model="minilm")
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda job: post(server, "/v1/embeddings", {"input": job[1], "model": job[0],
                                                                               "encoding_format": "base64"}), jobs))
    for (model, texts), r in zip(jobs, responses):
        assert r.status_code == 200 and r.json()["model"] == model
        want = (minilm if model == "minilm" else tiny_pplx).encode(texts)
        got = np.stack([decode(d, "base64") for d in r.json()["data"]])
        assert np.allclose(got, want, atol=1e-4), f"response for {texts} is not its own"
    # the minilm requests were merged into fewer engine calls than requests
    assert metric(server, "pplx_batch_requests_count", model="minilm") - calls < sum(m == "minilm" for m, _ in jobs)


@pytest.fixture(scope="module")
def tight(minilm):
    """One request in flight per model, 64 KiB body cap."""
    limits = ServeLimits(max_concurrent_requests=1, payload_limit=65536)
    with serve_in_thread(ServeConfig(models=[("minilm", minilm)], limits=limits, warmup=False)) as (url, _):
        yield url


def test_flooded_queue_answers_429_with_retry_after(tight):
    body = {"input": [f"text number {i} " * 40 for i in range(16)]}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(tight, "/v1/embeddings", body), range(8)))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert_error(r, 429, "queue_full")
            assert int(r.headers["retry-after"]) >= 1
    assert post(tight, "/v1/embeddings", {"input": "after the flood"}).status_code == 200


def test_payload_size_cap(tight):
    assert_error(post(tight, "/v1/embeddings", {"input": ["x" * 70000]}), 413, "payload_too_large", "65536")
    chunked = httpx.post(tight + "/v1/embeddings", content=iter([b'{"input": "', b"y" * 70000, b'"}']),
                         headers={"content-type": "application/json"})
    assert_error(chunked, 413, "payload_too_large")


def test_timeout_answers_504(minilm):
    config = ServeConfig(models=[("minilm", minilm)], limits=ServeLimits(request_timeout=0.001), warmup=False)
    with serve_in_thread(config) as (url, _):
        assert_error(post(url, "/v1/embeddings", {"input": ["slow " * 200] * 32}), 504, "timeout")
        assert metric(url, "pplx_cancelled_requests_total", model="minilm", reason="timeout") == 1


def test_client_disconnect_drops_queued_work(minilm):
    with serve_in_thread(ServeConfig(models=[("minilm", minilm)], warmup=False)) as (url, _):
        busy = ["keeps the worker busy " * 40] * 20
        first = ThreadPoolExecutor(1).submit(post, url, "/v1/embeddings", {"input": busy})
        while metric(url, "pplx_requests_running", model="minilm") < 1:  # the worker is busy with it
            time.sleep(0.005)
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"input": ["abandoned while queued"]}).encode()
        with socket.create_connection((host, int(port))) as sock:  # queued behind the busy request, then gone
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            while metric(url, "pplx_queue_depth", model="minilm") < 1:
                time.sleep(0.005)
        assert first.result().status_code == 200
        assert wait_metric(url, "pplx_cancelled_requests_total", 1, model="minilm", reason="disconnect") == 1
        # only the busy request's tokens ever reached the model
        assert metric(url, "pplx_tokens_total", model="minilm") == first.result().json()["usage"]["total_tokens"]


def test_graceful_shutdown_finishes_in_flight_requests(minilm):
    result = {}
    with serve_in_thread(ServeConfig(models=[("minilm", minilm)], warmup=False)) as (url, server):
        worker = threading.Thread(target=lambda: result.update(
            r=post(url, "/v1/embeddings", {"input": ["finish me " * 40] * 32})))
        worker.start()
        while metric(url, "pplx_requests_in_flight", model="minilm") < 1:
            time.sleep(0.01)
        server.should_exit = True
        worker.join(60)
    assert result["r"].status_code == 200 and len(result["r"].json()["data"]) == 32


def test_health_is_503_until_models_are_loaded(tiny_pplx_dir):
    import uvicorn

    from pplx_embed.serve.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(models=[("tiny", str(tiny_pplx_dir))])),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while True:  # loading a checkpoint takes far longer than starting to listen: the first answer is 503
            try:
                health = httpx.get(url + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.01)
        assert health.status_code == 503 and health.json() == {"status": "loading", "replicas": 1}
        early = post(url, "/v1/embeddings", {"input": "early"})
        if httpx.get(url + "/health").status_code == 503:  # still loading after the request: it was refused
            assert_error(early, 503, "not_ready", "loading")
            assert early.headers["retry-after"]
        while httpx.get(url + "/health").status_code != 200:
            time.sleep(0.02)
        assert post(url, "/v1/embeddings", {"input": "ready now"}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)


def test_failed_model_load_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="failed"):
        with serve_in_thread(ServeConfig(models=[("broken", str(tmp_path / "no-such-model"))])):
            pass


# ---- auth -----------------------------------------------------------------------------------------
def test_auth(minilm, tiny_pplx, tmp_path, caplog):
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"sk-tiny-only": ["tiny"], "sk-all": "*"}))
    keys = KeyRing.from_options(["sk-cli"], str(keys_file))
    config = ServeConfig(models=[("minilm", minilm), ("tiny", tiny_pplx)], keys=keys, warmup=False)
    caplog.set_level("DEBUG")
    with serve_in_thread(config) as (url, _):
        def call(key: str | None, model: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return post(url, "/v1/embeddings", {"input": "hi", "model": model}, headers=headers)

        assert_error(call(None, "tiny"), 401, "missing_api_key")
        assert_error(call("sk-wrong", "tiny"), 401, "invalid_api_key")
        assert call("sk-tiny-only", "tiny").status_code == 200
        assert_error(call("sk-tiny-only", "minilm"), 403, "model_not_allowed")
        assert call("sk-all", "minilm").status_code == 200 and call("sk-cli", "minilm").status_code == 200
        assert_error(httpx.get(url + "/v1/models"), 401)
        listed = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sk-tiny-only"}).json()["data"]
        assert [m["id"] for m in listed] == ["tiny"]
        assert httpx.get(url + "/health").status_code == 200
        assert "sk-" not in httpx.get(url + "/metrics").text
    assert "sk-tiny-only" not in caplog.text and "sk-wrong" not in caplog.text


def test_cli_config_from_options_and_env(monkeypatch, tmp_path):
    from pplx_embed.cli import build_parser
    from pplx_embed.cli.serve import build_config

    monkeypatch.setenv("PPLX_EMBED_SERVE_API_KEY", "sk-env")
    args = build_parser().parse_args(["serve", "--model", "q=minilm", "--model", "d=minilm",
                                      "--split", "ab=q:90,d:10", "--shadow", "q=d", "--max-concurrent-requests", "4"])
    config = build_config(args)
    assert config.models == [("q", "minilm"), ("d", "minilm")]
    assert config.splits == {"ab": [("q", 90.0), ("d", 10.0)]} and config.shadows == {"q": "d"}
    assert config.limits.max_concurrent_requests == 4 and config.keys.enabled
    for bad in (["--split", "ab=q:0"], ["--split", "ab=x:1"], ["--shadow", "q"], ["--max-concurrent-requests", "0"]):
        with pytest.raises(InputError):
            build_config(build_parser().parse_args(["serve", "--model", "q=minilm", *bad]))
