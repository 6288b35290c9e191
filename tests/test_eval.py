"""Evaluation suite: metrics on hand-checkable qrels, loaders and their errors, search views, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pplx_embed.eval.cache import EmbeddingCache
from pplx_embed.eval.datasets import DataError, load_beir, load_sts
from pplx_embed.eval.metrics import evaluate
from pplx_embed.eval.retrieval import Embeddings, bytes_per_vector, search, to_run
from pplx_embed.model.quantization import quantize, similarity


# ---- metrics --------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values_on_graded_qrels():
    qrels = {"q1": {"d1": 2, "d3": 1, "d4": 0}, "q2": {"d9": 1}}
    run = {"q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.6}, "q2": {"d5": 0.5}}
    m = evaluate(qrels, run)
    # q1: ranks d2(0) d1(2) d3(1). DCG = 2/log2(3) + 1/log2(4); ideal = 2/log2(2) + 1/log2(3).
    ndcg_q1 = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(ndcg_q1 / 2)  # q2 found nothing: 0
    assert m["mrr@10"] == pytest.approx(0.5 / 2)  # first hit of q1 at rank 2
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2) / 2)  # precisions at the two hits of q1
    assert m["recall@10"] == pytest.approx(0.5)  # q1 found both, q2 none
    assert m["accuracy@1"] == 0.0 and m["recall@1"] == 0.0  # neither query's best hit is relevant
    top = evaluate(qrels, {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}, "q2": {"d5": 0.5}})
    assert top["accuracy@1"] == pytest.approx(1 / 2)  # q1's best hit is relevant, q2's is not
    assert top["recall@1"] == pytest.approx((1 / 2) / 2)  # q1 found one of its two relevant rows at rank 1


def test_mrr_is_cut_at_ten_and_missing_queries_score_zero():
    qrels = {"q1": {"hit": 1}, "q2": {"x": 1}, "q3": {"y": 0}}  # q3 has no relevant doc: not counted
    run = {"q1": {f"d{i}": 100.0 - i for i in range(10)} | {"hit": 1.0}}  # hit at rank 11
    m = evaluate(qrels, run)
    assert m["mrr@10"] == 0.0
    assert m["recall@100"] == pytest.approx(0.5)  # q1 found at 11, q2 absent from the run
    assert m["ndcg@10"] == 0.0


def test_to_run_keeps_the_search_order_even_on_tied_scores():
    ranked = np.array([[2, 0, 1]])
    run = to_run(ranked, ["q"], ["a", "b", "c"])
    assert sorted(run["q"], key=lambda d: -run["q"][d]) == ["c", "a", "b"]


# ---- loaders --------------------------------------------------------------------------------
def write_beir(root, corpus, queries, qrels_lines):
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(c if isinstance(c, str) else json.dumps(c) + "\n" for c in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                             + "".join(line + "\n" for line in qrels_lines))
    return root


CORPUS = [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
QUERIES = [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}, {"_id": "q3", "text": "unjudged?"}]


def test_beir_loader_reads_titles_graded_qrels_and_keeps_judged_queries(tmp_path):
    ds = load_beir(write_beir(tmp_path / "set", CORPUS, QUERIES, ["q1\td1\t2", "q2\td2\t1", "q2\td1\t0"]))
    assert ds.corpus_texts == ["T one", "two"]
    assert ds.query_ids == ["q1", "q2"]  # q3 has no judgement
    assert ds.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1, "d1": 0}}
    assert not ds.contextual


@pytest.mark.parametrize("corpus, qrels, expected", [
    (CORPUS[:1] + ['{"_id": "d2", "text": \n'], ["q1\td1\t1"], "corpus.jsonl:2: not valid JSON"),
    (CORPUS + [{"_id": "d1", "text": "again"}], ["q1\td1\t1"], "corpus.jsonl:3: duplicate _id 'd1'"),
    (CORPUS + [{"_id": "d3"}], ["q1\td1\t1"], "corpus.jsonl:3: field 'text' must be a string"),
    (CORPUS, ["q1\td1\t1", "q2\td2\tyes"], "test.tsv:3: score 'yes' is not an integer"),
    (CORPUS, ["q1\td1"], "test.tsv:2: expected 3 tab-separated columns"),
    (CORPUS, ["q1\td7\t1"], "corpus-id 'd7' (query 'q1') is not in corpus.jsonl"),
])
def test_beir_loader_names_file_and_line_of_malformed_input(tmp_path, corpus, qrels, expected):
    root = write_beir(tmp_path / "bad", corpus, QUERIES, qrels)
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_beir(root)


def chunk(doc, k, text=None):
    return {"_id": f"{doc}#{k}", "title": "", "text": text or f"{doc} part {k}", "doc_id": doc, "chunk_index": k}


def test_contextual_loader_keeps_chunk_order_even_when_rows_are_shuffled(tmp_path):
    rows = [chunk("B", 1), chunk("A", 0), chunk("B", 0), chunk("A", 2), chunk("A", 1)]
    ds = load_beir(write_beir(tmp_path / "ctx", rows, QUERIES[:1], ["q1\tA#1\t1"]))
    assert ds.contextual
    assert [(doc, [ds.corpus_ids[r] for r in idx]) for doc, idx in ds.documents] == [
        ("B", ["B#0", "B#1"]), ("A", ["A#0", "A#1", "A#2"])]


@pytest.mark.parametrize("rows, expected", [
    ([chunk("A", 0), chunk("A", 2)], "document 'A' lacks chunk_index 1"),
    ([chunk("A", 0), chunk("A", 0) | {"_id": "x"}], "corpus.jsonl:2: chunk 0 of document 'A' already given on line 1"),
    ([chunk("A", 0), {"_id": "z", "text": "no doc"}], "corpus.jsonl:2: contextual row 'z' needs a 'doc_id'"),
    ([chunk("A", 0), chunk("A", 1) | {"chunk_index": "1"}],
     "corpus.jsonl:2: 'chunk_index' must be a non-negative integer"),
])
def test_contextual_loader_rejects_gaps_and_duplicates(tmp_path, rows, expected):
    with pytest.raises(DataError, match=expected):
        load_beir(write_beir(tmp_path / "ctx", rows, QUERIES[:1], ["q1\tA#0\t1"]))


def test_sts_loader_splits_on_tabs_without_csv_quoting(tmp_path):
    path = tmp_path / "en-test.tsv"
    path.write_text('sentence1\tsentence2\tscore\nA "quoted" man.\tA man.\t4.2\nx\ty\t0\n')
    ds = load_sts(path)
    assert ds.sentences1 == ['A "quoted" man.', "x"] and ds.scores == [4.2, 0.0]
    path.write_text("sentence1\tsentence2\tscore\nA\tB\t1\nA\tB\n")
    with pytest.raises(DataError, match="en-test.tsv:3: expected 3 tab-separated columns"):
        load_sts(path)


def test_shared_data_sets_load(shared_data):
    ctx = load_beir(shared_data / "covidqa-ctx")
    assert ctx.contextual and len(ctx.documents) == 98 and sum(len(i) for _, i in ctx.documents) == 1909
    for _, rows in ctx.documents:  # every document's chunks in chunk_index order
        assert [ctx.corpus_ids[r].split("#")[1] for r in rows] == [str(k) for k in range(len(rows))]
    assert load_beir(shared_data / "xquad" / "de").name == "xquad/de"


# ---- search -----------------------------------------------------------------------------------
def test_views_equal_encode_at_every_precision_and_dimension(minilm):
    texts = ["How do vaccines work?", "Le chat dort sur le canapé.", "Binary vectors keep sign bits."]
    pooled = EmbeddingCache(None).pooled(minilm, texts)
    e = Embeddings(pooled, quantize(pooled, "int8"))
    for d in (128, 256, 384):
        np.testing.assert_array_equal(e.view("int8", d), minilm.encode(texts, "int8", d))
        np.testing.assert_array_equal(e.view("binary", d), minilm.encode(texts, "binary", d))
        np.testing.assert_allclose(similarity(e.view("float", d), e.view("float", d)),
                                   similarity(minilm.encode(texts, "float", d), minilm.encode(texts, "float", d)),
                                   atol=1e-5)


def test_binary_rescore_reorders_only_the_candidates_by_int8():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(5, 128)).astype(np.float32), rng.normal(size=(300, 128)).astype(np.float32)
    queries, docs = Embeddings(q, quantize(q, "int8")), Embeddings(d, quantize(d, "int8"))
    binary = search(queries, docs, "binary", 128, k=200)
    rescored = search(queries, docs, "binary+rescore", 128, k=200, rescore=50)
    assert binary.shape == rescored.shape == (5, 200)
    np.testing.assert_array_equal(binary[:, 50:], rescored[:, 50:])
    for i in range(5):
        assert set(binary[i, :50]) == set(rescored[i, :50])
        fine = similarity(queries.int8[i : i + 1], docs.int8[rescored[i, :50]])[0]
        assert np.all(np.diff(fine) <= 1e-6)
    exact = search(queries, docs, "float", 128, k=1)[:, 0]
    np.testing.assert_array_equal(exact, np.argmax(similarity(q, d), axis=1))


def test_bytes_per_vector():
    assert [bytes_per_vector(p, 256) for p in ("float", "int8", "binary", "binary+rescore")] == [1024, 256, 32, 288]
    with pytest.raises(ValueError, match="unknown precision"):
        bytes_per_vector("fp16", 256)


# ---- cache ------------------------------------------------------------------------------------
def test_cache_serves_repeats_from_disk_and_survives_a_corrupt_entry(minilm, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    texts = ["alpha beta", "gamma delta"]
    first = cache.pooled(minilm, texts)
    again = cache.pooled(minilm, texts)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, again)
    cache.pooled(minilm, texts, truncation="right")  # other settings: another entry
    cache.pooled(minilm, texts[::-1])  # other texts: another entry
    assert cache.misses == 3 and len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))
    for entry in (tmp_path / "cache").glob("*.npy"):
        entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(cache.pooled(minilm, texts), first)  # recomputed, not crashed
    assert cache.misses == 4


def test_sample_corpus_keeps_every_judged_row_and_records_the_full_size(tmp_path):
    from pplx_embed.eval.datasets import sample_corpus

    corpus = [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(50)]
    ds = load_beir(write_beir(tmp_path / "big", corpus, QUERIES, ["q1\td7\t1", "q2\td40\t2", "q2\td3\t0"]))
    small = sample_corpus(ds, 10)
    assert len(small.corpus_ids) == 10 and small.sampled_from == 50
    assert {"d7", "d40", "d3"} <= set(small.corpus_ids)
    assert small.corpus_ids == sorted(small.corpus_ids, key=lambda c: int(c[1:]))  # file order kept
    assert sample_corpus(ds, 10).corpus_ids == small.corpus_ids  # seeded
    with pytest.raises(ValueError, match="3 judged rows"):
        sample_corpus(ds, 2)


def test_cache_folder_follows_the_environment_when_asked(tmp_path, monkeypatch):
    from pplx_embed.options import cache_dir

    assert cache_dir("eval", {}) == Path.home() / ".cache" / "pplx-embed" / "eval"
    monkeypatch.setenv("PPLX_EMBED_CACHE", str(tmp_path))  # after import: still honoured
    assert cache_dir("eval") == tmp_path / "eval" and cache_dir("onnx") == tmp_path / "onnx"
