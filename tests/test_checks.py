"""Input is checked once, by one rule per kind, with the same message through the Python API, the CLI and HTTP;
every output precision comes from one place, so the index stores the model's own int8 codes."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from pplx_embed.checks import Filter, Texts, check_documents, check_filter, check_metadata, check_texts
from pplx_embed.errors import InputError
from pplx_embed.index import Index
from pplx_embed.serve.app import ServeConfig
from pplx_embed.serve.background import serve_in_thread
from test_cli import cli

TEXTS = ["Paris is the capital of France.", "Late chunking embeds each chunk in its document's context."]


# ---- one message through all three edges ------------------------------------------------------------------
BAD = [  # (texts, options) → the one message every edge shows
    ([" "], {}, "text 0 is empty; every text needs some content"),
    (["fine", "\ud800 lone surrogate"], {}, "text 1 is not valid Unicode (surrogates not allowed at character 0)"),
    (["a text"], {"quantization": "binary", "dimensions": 129},
     "binary codes pack 8 dimensions per byte: dimensions must be a multiple of 8, got 129"),
    (["a text"], {"quantization": "int8", "dimensions": 4096},
     "dimensions must be between 128 and 384 for this model, got 4096"),
    (["word " * 400], {}, "text 0 has 400 tokens, more than the model's limit of 254; shorten it or pass "
                          "truncation='right' (or 'left')"),
]
FORMATS = {"int8": "base64_int8", "binary": "base64_binary", None: "base64_int8"}


@pytest.fixture(scope="module")
def server(minilm):
    with serve_in_thread(ServeConfig(models=[("minilm", minilm)], warmup=False)) as (url, _):
        yield url


@pytest.mark.parametrize("texts, options, message", BAD)
def test_one_message_through_python_cli_and_http(minilm, server, tmp_path, texts, options, message):
    with pytest.raises(InputError) as python:
        minilm.encode(texts, **options)
    assert str(python.value) == message

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    flags = [f"--{k}={v}" for k, v in options.items()]
    result = cli("embed", str(source), "-o", str(tmp_path / "out.npy"), "-m", "minilm", *flags)
    assert result.returncode == 2 and result.stderr.strip() == f"pplx-embed: error: {message}"

    body = {"input": texts, "model": "minilm", "encoding_format": FORMATS[options.get("quantization")]}
    if "dimensions" in options:
        body["dimensions"] = options["dimensions"]
    reply = httpx.post(f"{server}/v1/embeddings", content=json.dumps(body, ensure_ascii=True), timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code in (400, 413) and reply.json()["error"]["message"] == message


# ---- checked types are trusted below the edge -------------------------------------------------------------
def test_checked_types_pass_through_and_rules_live_once():
    texts = check_texts(["a", "b"])
    assert isinstance(texts, Texts) and check_texts(texts) is texts
    docs = check_documents([["a", ""], ["b"]])  # an empty chunk is allowed (a zero vector)
    assert check_documents(docs) is docs
    assert check_filter({"n": 3.0, "lang": "en"}) == {"n": 3, "lang": "en"}
    assert isinstance(check_filter(None), Filter) and check_filter(None) == {}
    for bad, message in [({"k": "\udcff"}, "not valid Unicode"), ({"k": [1]}, "must be a string"),
                         ({"bad key!": 1}, "is not valid"), ({"k": 2**64}, "64-bit")]:
        with pytest.raises(InputError, match=message):
            check_filter(bad)
    with pytest.raises(InputError, match="not valid Unicode"):
        check_metadata({"note": ["fine", {"deep": "\ud800"}]})
    with pytest.raises(InputError, match="give at least one text"):
        check_texts([], required=True)


# ---- one place derives the outputs --------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["minilm", "tiny_pplx"])
def test_encode_all_equals_encode_and_the_index_stores_the_models_int8(model, request, tmp_path):
    embedder = request.getfixturevalue(model)
    outputs = embedder.encode_all(TEXTS, ("pooled", "float", "int8", "binary", "pm1"))
    for precision in ("float", "int8", "binary", "pm1"):
        want = embedder.encode(TEXTS, quantization=precision)
        assert outputs[precision].dtype == want.dtype and np.array_equal(outputs[precision], want)
    assert np.array_equal(outputs["pooled"], embedder.pooled(TEXTS))
    dims = min(128, embedder.dimension)
    cut = embedder.encode_all(TEXTS, ("int8", "binary"), dims)
    assert np.array_equal(cut["int8"], embedder.encode(TEXTS, quantization="int8", dimensions=dims))

    ix = Index.create(str(tmp_path / "ix"), embedder.name, embedder=embedder)
    ix.add(TEXTS, ids=["a", "b"])
    stored = ix.get(["a", "b"], "int8")
    assert np.array_equal(np.stack([stored["a"], stored["b"]]), outputs["int8"])  # byte for byte
    assert np.array_equal(ix.get(["a"], "binary")["a"], outputs["binary"][0])
    assert ix.search(TEXTS[1], k=1)[0].id == "b"
    ix.close()


def test_contextual_outputs_equal_encode_contextual(tiny_pplx):
    docs = [["First chunk.", "", "Third chunk."], ["Another document."]]
    outputs = tiny_pplx.encode_contextual_all(docs, ("int8", "binary"))
    for precision in ("int8", "binary"):
        for got, want in zip(outputs[precision], tiny_pplx.encode_contextual(docs, quantization=precision)):
            assert np.array_equal(got, want)
    assert tiny_pplx.encode_contextual_all([], ("int8",)) == {"int8": []}


# ---- the index checks ids and metadata before it embeds anything -------------------------------------------
def test_index_refuses_bad_items_before_embedding(tiny_pplx, tmp_path, monkeypatch):
    ix = Index.create(str(tmp_path / "ix"), tiny_pplx.name, embedder=tiny_pplx)
    runs = []  # the real engine runs, counted
    original = tiny_pplx.engine.run
    monkeypatch.setattr(tiny_pplx.engine, "run", lambda *a, **k: runs.append(1) or original(*a, **k))
    for kwargs, message in [({"ids": ["\ud800"]}, "not valid Unicode"),
                            ({"ids": ["a"], "metadata": [{"note": "\udc80"}]}, "not valid Unicode"),
                            ({"ids": ["a", "a"]}, "repeat")]:
        with pytest.raises(InputError, match=message):
            ix.add(["some text"] * len(kwargs["ids"]), **kwargs)
    with pytest.raises(InputError, match="not late-chunked documents"):
        ix.add_documents([["chunk"]], doc_ids=["d"])
    assert runs == [] and len(ix) == 0
    with pytest.raises(InputError, match="multiple of 8"):
        Index.create(str(tmp_path / "odd"), "m", 130, full_dimension=256)
    with pytest.raises(InputError, match="between"):
        Index.create(str(tmp_path / "zero"), "m", 0, full_dimension=256)
    ix.close()


def test_numeric_filters_match_integers_and_floats(tmp_path):
    ix = Index.create(str(tmp_path / "ix"), "m", 128)
    x = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
    ix.add(ids=["int", "float", "text"], vectors=x, metadata=[{"n": 3}, {"n": 3.0}, {"n": "3"}])
    for value in (3, 3.0):
        assert {h.id for h in ix.search(x[0], k=3, filter={"n": value})} == {"int", "float"}
    assert [h.id for h in ix.search(x[0], k=3, filter={"n": "3"})] == ["text"]
    ix.close()
