"""Hostile requests to every route of a real server process: JSON 4xx for client mistakes (never a 5xx),
errors that quote little of what was sent, logs that neither grow with the request nor show keys, and
memory that stays put under the barrage. Then each defect of issue 23 as its own regression."""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adversarial import hostile
from adversarial.hostile import KEY, exchange, request

KINDS = tuple(hostile.KINDS)


def barrage(served, seed: int, count: int, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """``count`` generated hostile requests from 4 clients at once; the problems found."""
    cases = hostile.cases(seed, count, kinds)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda case: exchange(served.address, case.raw, case.method), cases))
    return [problem for case, answer in zip(cases, answers) for problem in hostile.problems(case, answer)]


def metric(served, name: str, **labels) -> float:
    """One sample of /metrics (0 when absent)."""
    text = exchange(served.address, request("GET", "/metrics"), "GET").body.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_hostile_barrage_gets_json_4xx_bounded_answers_and_bounded_memory(served):
    found = barrage(served, seed=23, count=300)
    assert not found, "\n".join(found)
    warm = served.rss()
    found = barrage(served, seed=24, count=300)
    assert not found, "\n".join(found)
    grown = (served.rss() - warm) / 2**20
    assert grown < 200, f"the server grew by {grown:.0f} MiB over 300 hostile requests"
    assert served.healthy()
    found = hostile.log_problems(served.text())
    assert not found, "\n".join(found)


def test_lone_surrogates_in_index_ids_metadata_and_filters_are_400_before_any_work(served):
    """#2: they reached SQLite (UnicodeEncodeError, 500); for ids and metadata after the texts were embedded."""
    tokens = metric(served, "pplx_tokens_total")
    found = barrage(served, seed=2, count=12, kinds=("invalid_unicode_index",))
    assert not found, "\n".join(found)
    assert metric(served, "pplx_tokens_total") == tokens


# ---- #7: JSON nested 10,000 deep ----------------------------------------------------------------------
@pytest.mark.parametrize("body", [b'{"input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
                                  b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}",
                                  b'{"input": "caf\xe9"}'])
def test_unparseable_json_is_invalid_json(served, body):
    answer = exchange(served.address, request("POST", "/v1/embeddings", body))
    assert answer.status == 400 and answer.json()["error"]["code"] == "invalid_json", answer


# ---- #10: bounded echo, redacted logs -----------------------------------------------------------------
def test_errors_quote_at_most_100_characters_of_a_client_value(served):
    long = hostile.MARKER * 200_000  # 1.2 MB: a bigger body than the limit allows is 413 before any echo
    for path, body, status in (("/v1/embeddings", {"input": "a", "model": long[:600_000]}, 404),
                               ("/v1/indexes/kb/search", {"query": "a", long[:600_000]: 1}, 422),
                               ("/v1/embeddings", {"input": "a", "model": "\ud800" + long[:1000]}, 404)):
        answer = exchange(served.address, request("POST", path, json.dumps(body).encode()))
        assert answer.status == status, answer
        assert answer.body.count(hostile.MARKER.encode()) * len(hostile.MARKER) <= 100, answer.body[:300]
        assert len(answer.body) < 1000
    answer = exchange(served.address, request("POST", f"/v1/indexes/{long[:50_000]}/search", b'{"query": "a"}'))
    assert answer.status == 404 and answer.json()["error"]["code"] == "index_not_found"
    assert answer.body.count(hostile.MARKER.encode()) * len(hostile.MARKER) <= 100


def test_logs_cut_long_paths_and_redact_keys_in_query_strings(served):
    marker = "RedactCheck"
    exchange(served.address, request("GET", f"/health?{marker}=1&api_key={KEY}&token=t0ps3cret", key=None), "GET")
    exchange(served.address, request("GET", f"/v1/models/{marker}{hostile.MARKER * 2000}?a=2"), "GET")
    deadline = time.monotonic() + 10
    while served.text().count(marker) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in served.text().splitlines() if marker in line]
    assert len(lines) == 2, lines
    assert KEY not in served.text() and "t0ps3cret" not in served.text()
    assert "api_key=[redacted]" in lines[0] and "token=[redacted]" in lines[0]
    assert len(lines[1]) < 600 and lines[1].count(hostile.MARKER) * len(hostile.MARKER) <= 300


# ---- HEAD, and what is open without a key ---------------------------------------------------------------
def test_head_answers_every_get_route_without_a_body(served):
    routes = (("/health", None), ("/ready", None), ("/metrics", None), ("/v1/models", KEY), ("/v1/indexes", KEY))
    for path, key in routes:
        with socket.create_connection(served.address, timeout=30) as sock:
            sock.sendall(request("HEAD", path, key=key) + request("GET", "/health", key=None))
            both, _ = hostile.until_closed(sock)  # the idle timeout closes it
        head, _, rest = both.partition(b"\r\n\r\n")  # the HEAD answer has no body: the GET answer follows
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head and rest.startswith(b"HTTP/1.1 200")
        assert rest.endswith(b'{"status":"ok","models":["minilm"],"replicas":1}'), (path, both)
    assert exchange(served.address, request("HEAD", "/v1/models", key=None), "HEAD").status == 401
    assert exchange(served.address, request("HEAD", "/v1/embeddings"), "HEAD").status == 405


def test_only_probes_and_metrics_are_open_without_a_key(served):
    for path in ("/health", "/ready", "/metrics"):
        assert exchange(served.address, request("GET", path, key=None), "GET").status == 200
    for path in ("/openapi.json", "/v1/models", "/v1/indexes"):
        answer = exchange(served.address, request("GET", path, key=None), "GET")
        assert answer.status == 401 and answer.json()["error"]["code"] == "missing_api_key", (path, answer)
    spec = exchange(served.address, request("GET", "/openapi.json"), "GET")
    assert spec.status == 200 and "/v1/embeddings" in spec.json()["paths"]
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # HTML pages that load scripts from a CDN: not served
        answer = exchange(served.address, request("GET", path), "GET")
        assert answer.status == 404 and answer.json()["error"]["code"] == "not_found", (path, answer)


# ---- #6: clients that leave mid-body are no server error -------------------------------------------------
def test_clients_leaving_mid_body_are_counted_499_not_500(served):
    before = metric(served, "pplx_requests_total", status="500")
    gone = metric(served, "pplx_requests_total", endpoint="/v1/embeddings", status="499")
    for _ in range(3):
        with socket.create_connection(served.address, timeout=30) as sock:
            sock.sendall(request("POST", "/v1/embeddings", b'{"input": "half', length=1000))
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    while metric(served, "pplx_requests_total", endpoint="/v1/embeddings", status="499") < gone + 3:
        assert time.monotonic() < deadline, "the disconnects were not counted as 499"
        time.sleep(0.05)
    assert metric(served, "pplx_requests_total", status="500") == before


# ---- the lead's validation rules (issue 22): fail until their modules land --------------------------------
def test_contextual_documents_into_a_plain_index_are_refused(served):
    """#8: a non-contextual index stored ``d#0`` from contextual documents."""
    answer = exchange(served.address, request("POST", "/v1/indexes/kb/documents",
                                              b'{"documents": [["one chunk", "two"]], "doc_ids": ["d"]}'))
    assert answer.status == 400 and answer.json()["error"]["code"] == "invalid_value", answer


@pytest.mark.parametrize("dimensions", [129, 130, 135])
def test_binary_dimensions_must_be_a_multiple_of_8(served, dimensions):
    """#9: 129 and 130 both answered the same 17 bytes; the index refuses such dimensions, the wire must too."""
    body = json.dumps({"input": "a", "dimensions": dimensions, "encoding_format": "base64_binary"}).encode()
    answer = exchange(served.address, request("POST", "/v1/embeddings", body))
    assert answer.status == 400 and "multiple of 8" in answer.json()["error"]["message"], answer


def test_a_float_filter_matches_an_equal_stored_integer(served):
    """A filter {"n": 3.0} found nothing though item p was stored with n = 3."""
    body = b'{"query": "capital of France", "k": 5, "filter": {"n": 3.0}}'
    answer = exchange(served.address, request("POST", "/v1/indexes/kb/search", body))
    assert answer.status == 200 and [hit["id"] for hit in answer.json()["data"][0]["hits"]] == ["p"], answer
