"""Retrieval-index routes of the server, run for real (uvicorn on 127.0.0.1) over an index on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pplx_embed.index import Index
from pplx_embed.serve.app import ServeConfig
from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.background import serve_in_thread

SEED = ["Paris is the capital of France.", "The Eiffel Tower is in Paris."]
TEXTS = ["Binary embeddings are 32x smaller than float32 ones.", "Late chunking embeds chunks in context.",
         "Le chat dort sur le canapé.", "Berlin is the capital of Germany.", "int8 codes are tanh(x)·127."]
QUERIES = ["Which city is the capital of France?", "How small are binary vectors?"]
ALL = {"Authorization": "Bearer sk-all"}


@pytest.fixture(scope="module")
def served(minilm, tmp_path_factory):
    root = tmp_path_factory.mktemp("ix")
    path, contextual = str(root / "docs"), str(root / "ctx")
    with Index.create(path, minilm.name, embedder=minilm) as ix:
        ix.add(SEED, ids=["s0", "s1"], metadata=[{"lang": "en"}, {"lang": "en"}])
    Index.create(contextual, minilm.name, embedder=minilm, contextual=True).close()
    keys = KeyRing({"sk-all": "*", "sk-other": ["other-model"]})
    config = ServeConfig(models=[("minilm", minilm)], indexes=[("docs", path), ("ctx", contextual)], keys=keys,
                         warmup=False)
    with serve_in_thread(config) as (url, _):
        yield url, path, contextual


def post(url: str, path: str, body, headers=ALL) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str | None = None, contains: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and contains in error["message"]
    assert code is None or error["code"] == code


def test_add_then_search_equals_python_api(served, minilm):
    url, path, _ = served
    metadata = [{"lang": "en"}, {"lang": "en"}, {"lang": "fr"}, {"lang": "en"}, None]
    r = post(url, "/v1/indexes/docs/documents", {"texts": TEXTS, "ids": [f"t{i}" for i in range(5)],
                                                  "metadata": metadata})
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 5}
    r = post(url, "/v1/indexes/docs/documents", {"texts": ["Paris has 2 million people."], "ids": ["s1"],
                                                  "upsert": True})
    assert r.json() == {"added": 1}

    r = post(url, "/v1/indexes/docs/search", {"query": QUERIES, "k": 3, "filter": {"lang": "en"}, "candidates": 50})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == minilm.name
    with Index.open(path, embedder=minilm) as ix:  # a second reader of the same files, in this process
        assert len(ix) == 7
        expected = ix.search_many(QUERIES, 3, filter={"lang": "en"}, candidates=50)
        single = ix.search(QUERIES[0], k=7)
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert [d["hits"] for d in body["data"]] == [[h.to_dict() for h in hits] for hits in expected]
    assert all(h["metadata"] == {"lang": "en"} for d in body["data"] for h in d["hits"])

    r = post(url, "/v1/indexes/docs/search", {"query": QUERIES[0], "k": 7})
    assert r.json()["data"] == [{"index": 0, "hits": [h.to_dict() for h in single]}]
    texts = {h["id"]: h["text"] for h in r.json()["data"][0]["hits"]}
    assert len(texts) == 7 and texts["s1"] == "Paris has 2 million people."  # upsert replaced "s1"

    listed = httpx.get(url + "/v1/indexes", headers=ALL).json()["data"]
    assert [(d["name"], d["model"], d["served_model"], d["stats"]["items"]) for d in listed] == \
        [("docs", minilm.name, "minilm", 7), ("ctx", minilm.name, "minilm", 0)]


def test_contextual_documents_then_search(served, minilm):
    url, _, path = served
    documents = [["Paris is the capital of France.", "It has 2 million people."], ["Berlin is in Germany."]]
    r = post(url, "/v1/indexes/ctx/documents", {"documents": documents, "doc_ids": ["fr", "de"],
                                                 "metadata": [{"src": "a"}, None]})
    assert r.json() == {"added": 3}
    r = post(url, "/v1/indexes/ctx/search", {"query": ["How many people live in Paris?"], "k": 3})
    with Index.open(path, embedder=minilm) as ix:
        expected = ix.search("How many people live in Paris?", k=3)
    hits = r.json()["data"][0]["hits"]
    assert hits == [h.to_dict() for h in expected]
    assert {(h["id"], h["doc_id"], h["position"]) for h in hits} == {("fr#0", "fr", 0), ("fr#1", "fr", 1),
                                                                    ("de#0", "de", 0)}


def metrics(url: str) -> dict:
    return {(s.name, s.labels.get("model"), s.labels.get("endpoint"), s.labels.get("status")): s.value
            for family in text_string_to_metric_families(httpx.get(url + "/metrics").text) for s in family.samples}


def test_embedding_goes_through_the_model_batcher(served, minilm):
    """The index routes embed on the served model's worker: its token counter sees every text and query."""
    url, _, _ = served
    tokens, searches = ("pplx_tokens_total", "minilm", None, None), \
        ("pplx_requests_total", "minilm", "/v1/indexes/{name}/search", "200")
    before = metrics(url)
    assert post(url, "/v1/indexes/docs/documents", {"texts": ["Rome is in Italy."], "ids": ["r"]}).status_code == 200
    assert post(url, "/v1/indexes/docs/search", {"query": QUERIES}).status_code == 200
    after = metrics(url)
    assert after[tokens] - before.get(tokens, 0) == sum(minilm.count_tokens(["Rome is in Italy.", *QUERIES]))
    assert after[searches] - before.get(searches, 0) == 1


def test_errors(served):
    url, _, _ = served
    assert_error(post(url, "/v1/indexes/nope/search", {"query": "x"}), 404, "index_not_found", "'nope'")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": ""}), 400, "empty_input")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": []}), 400, "empty_input")
    for k in (0, -1, "3", 1.5):
        assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", "k": k}), 422, "invalid_schema", "k")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", "filters": {"lang": "en"}}), 422)
    documents = "/v1/indexes/docs/documents"
    assert_error(post(url, documents, {"texts": ["a"]}), 422, "invalid_schema", "ids")
    assert_error(post(url, documents, {"texts": ["a"], "ids": ["a"], "documents": [["b"]]}), 422)
    assert_error(post(url, "/v1/indexes/ctx/documents", {"documents": [[]], "doc_ids": ["d"]}), 400, "empty_input")

    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x"}, headers={}), 401, "missing_api_key")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x"}, headers={"Authorization": "Bearer no"}),
                 401, "invalid_api_key")
    other = {"Authorization": "Bearer sk-other"}
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x"}, headers=other), 403, "model_not_allowed")
    assert_error(post(url, documents, {"texts": ["a"], "ids": ["z"]}, headers=other), 403, "model_not_allowed")
    assert httpx.get(url + "/v1/indexes", headers=other).json()["data"] == []
    assert_error(httpx.get(url + "/v1/indexes"), 401)


def test_bounded_filters_are_400_and_keep_the_connection(served):
    """Filters the store cannot run (600 keys: SQLite's expression depth; 10**30: no 64-bit integer) are 400s."""
    url, _, _ = served
    with httpx.Client(base_url=url, headers=ALL, timeout=60) as client:
        for bad, message in (({f"k{i}": i for i in range(600)}, "600 keys"), ({"n": 10**30}, "64-bit"),
                             ({"lang": {"$in": ["en"]}}, "must be a string"), ({"lang": "x" * 5000}, "longer")):
            assert_error(client.post("/v1/indexes/docs/search", json={"query": "x", "filter": bad}), 400,
                         "invalid_value", message)
        ok = client.post("/v1/indexes/docs/search", json={"query": "x", "filter": {"lang": "en", "n": 2**62}})
        assert ok.status_code == 200 and ok.json()["data"][0]["hits"] == []
        # one connection served every answer: a 4xx never drops the keep-alive connection
        assert client._transport._pool.connections.__len__() == 1


def test_index_input_errors_are_400(served):
    """The Index API's InputErrors (needs the index branch, where its validators raise InputError)."""
    url, _, _ = served
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", "filter": {"bad key!": 1}}), 400,
                 "invalid_value")
    documents = "/v1/indexes/docs/documents"
    assert_error(post(url, documents, {"texts": ["dup"], "ids": ["s0"]}), 400, "invalid_value", "s0")
    assert_error(post(url, documents, {"texts": ["a", "b"], "ids": ["x1"]}), 400, "invalid_value")
    assert_error(post(url, "/v1/indexes/ctx/documents", {"documents": [["a"], ["b"]], "doc_ids": ["d"]}), 400,
                 "invalid_value", "doc_ids")


def test_index_of_an_unserved_model_fails_startup(minilm, tmp_path):
    path = str(tmp_path / "other")
    Index.create(path, "some-other-model", 384, full_dimension=384).close()
    with pytest.raises(RuntimeError, match="needs model 'some-other-model'"):
        with serve_in_thread(ServeConfig(models=[("minilm", minilm)], indexes=[("o", path)], warmup=False)):
            pass


def test_cli_fails_with_one_line_naming_the_model(tiny_pplx_dir, tmp_path):
    path = str(tmp_path / "other")
    Index.create(path, "some-other-model", 64, full_dimension=64).close()
    env = {**os.environ, "PPLX_EMBED_SERVE_INDEX": f"o={path}", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "pplx_embed.cli", "serve", "--model", str(tiny_pplx_dir),
                          "--port", "0", "--log-level", "error"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert "needs model 'some-other-model'" in last and "Traceback" not in run.stderr


def test_search_options_match_the_python_api(served, minilm):
    """precision, dimensions and timings of a search, each equal to the Index API's own answer."""
    url, path, _ = served
    query = "Which city is the capital of France?"
    described = next(d for d in httpx.get(url + "/v1/indexes", headers=ALL).json()["data"] if d["name"] == "docs")
    assert described["search"] == {"precisions": ["binary+rescore", "binary", "int8"], "dimensions": [128, 256, 384],
                                   "exact": "int8"}
    with Index.open(path, embedder=minilm) as ix:
        for precision, options in (("binary+rescore", {}), ("binary", {"rescore": "none"}), ("int8", {"exact": True})):
            for dims in (None, 128):
                body = {"query": query, "k": 4, "precision": precision, **({"dimensions": dims} if dims else {})}
                r = post(url, "/v1/indexes/docs/search", body)
                assert r.status_code == 200, r.text
                answer = r.json()
                expected = ix.search(query, 4, dimensions=dims, **options)
                assert answer["data"][0]["hits"] == [h.to_dict() for h in expected], (precision, dims)
                assert (answer["precision"], answer["dimensions"]) == (precision, dims or 384)
                timings = answer["timings"]
                assert set(timings) == {"embed_ms", "first_stage_ms", "rescore_ms", "fetch_ms", "total_ms"}
                assert timings["embed_ms"] > 0 and timings["first_stage_ms"] > 0
                assert timings["total_ms"] >= timings["embed_ms"] + timings["first_stage_ms"] + timings["fetch_ms"]
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", "precision": "float"}), 400, "invalid_value",
                 "holds binary+rescore, binary, int8")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", "dimensions": 100}), 400, "invalid_value",
                 "between 128 and 384")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", "dimensions": 260}), 400, "invalid_value",
                 "multiple of 8")
    many = ["a query"] * 33  # work bounds: scans of every item, and neighbour lookups, per request
    assert_error(post(url, "/v1/indexes/docs/search", {"query": many, "precision": "int8"}), 400, "invalid_value",
                 "at most 32 queries")
    assert_error(post(url, "/v1/indexes/docs/search", {"query": many, "dimensions": 128}), 400, "invalid_value",
                 "at most 32 queries")
    assert post(url, "/v1/indexes/docs/search", {"query": many, "k": 1}).status_code == 200
    assert_error(post(url, "/v1/indexes/ctx/search", {"query": many, "k": 1000, "neighbours": 1}), 400,
                 "invalid_value", "neighbour chunks")
    for bad in ({"precision": "fp16"}, {"dimensions": "128"}, {"neighbours": 17}, {"neighbours": -1},
                {"precision": None}):
        assert_error(post(url, "/v1/indexes/docs/search", {"query": "x", **bad}), 422, "invalid_schema")


def test_contextual_hits_come_with_their_neighbours(served):
    url, _, _ = served
    chunks = ["Chapter one opens in Lisbon.", "The harbour smells of salt.", "Trams climb the seven hills.",
              "Fado plays in Alfama at night.", "The book ends at sea."]
    assert post(url, "/v1/indexes/ctx/documents", {"documents": [chunks], "doc_ids": ["lisbon"]}).status_code == 200
    r = post(url, "/v1/indexes/ctx/search", {"query": "trams on hills", "k": 10, "neighbours": 1})
    hits = {h["id"]: h for h in r.json()["data"][0]["hits"]}
    for position in range(5):
        hit = hits[f"lisbon#{position}"]
        near = [p for p in (position - 1, position + 1) if 0 <= p < 5]
        assert hit["neighbours"] == [{"id": f"lisbon#{p}", "position": p, "text": chunks[p]} for p in near]
    assert "neighbours" not in post(url, "/v1/indexes/ctx/search", {"query": "trams"}).json()["data"][0]["hits"][0]
    plain = post(url, "/v1/indexes/docs/search", {"query": "x", "neighbours": 2}).json()["data"][0]["hits"]
    assert plain and all("neighbours" not in h for h in plain)  # items without a document have none


def test_ui_page_is_open_and_everything_else_needs_the_key(served):
    url, _, _ = served
    page = httpx.get(url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'data-auth="required"' in page.text and "<label for=\"s-query\">Query</label>" in page.text
    script = httpx.get(url + "/ui/static/ui.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert_error(httpx.get(url + "/ui/static/..%2Fui.py"), 404)
    assert_error(httpx.get(url + "/ui/static/nope.js"), 404, "not_found")
    assert_error(httpx.get(url + "/ui/reports"), 401, "missing_api_key")
    assert_error(httpx.get(url + "/ui/reports/files/report.md"), 401, "missing_api_key")
    assert_error(httpx.get(url + "/ui/reports", headers=ALL), 404, "not_found", "--reports")


def test_cli_reports_option_and_its_env(monkeypatch, tmp_path):
    from pplx_embed.cli import build_parser
    from pplx_embed.cli.serve import build_config
    from pplx_embed.errors import InputError

    assert build_config(build_parser().parse_args(["serve", "--reports", str(tmp_path)])).reports == tmp_path.resolve()
    monkeypatch.setenv("PPLX_EMBED_SERVE_REPORTS", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="--reports .*nope: not a directory"):
        build_config(build_parser().parse_args(["serve"]))
