"""Exact search, Matryoshka search below the stored dimensions, per-stage timings and item lookup, checked
against brute force in numpy over the same codes."""

from __future__ import annotations

import numpy as np
import pytest

from pplx_embed.errors import InputError
from pplx_embed.index import Index
from pplx_embed.model.quantization import to_binary, to_int8

DIM, N = 256, 2500


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    q = x[:6] + 0.8 * rng.standard_normal((6, DIM)).astype(np.float32)
    path = tmp_path_factory.mktemp("exact") / "ix"
    with Index.create(path, "synthetic-model", DIM, store_float=True) as ix:
        ix.add(ids=[f"v{i}" for i in range(N)], vectors=x, texts=[f"text {i}" for i in range(N)],
               metadata=[{"part": i % 4} for i in range(N)])
    ix = Index.open(path)
    yield ix, x, q
    ix.close()


def unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def ids(hits) -> list[list[str]]:
    return [[h.id for h in per_query] for per_query in hits]


def top(scores: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[list[str]]:
    rows = np.arange(scores.shape[1]) if rows is None else rows
    return [[f"v{rows[j]}" for j in np.argsort(-s, kind="stable")[:k]] for s in scores]


@pytest.mark.parametrize("dims", [DIM, 128])
def test_exact_float_and_int8_equal_brute_force(data, dims):
    ix, x, q = data
    floats = unit(q[:, :dims]) @ unit(x[:, :dims]).T
    assert ids(ix.search_many(q, 10, exact=True, rescore="float", dimensions=dims)) == top(floats, 10)
    # int8: the stored codes against the query's code before rounding (tanh), as the first-stage path rescores
    int8 = unit(np.tanh(q[:, :dims])) @ unit(to_int8(x)[:, :dims]).T
    hits = ix.search_many(q, 10, exact=True, dimensions=dims)
    assert ids(hits) == top(int8, 10)
    assert [h.score for h in hits[0]] == pytest.approx(np.sort(int8[0])[::-1][:10], abs=1e-5)


def test_exact_binary_scores_are_hamming_over_every_item(data):
    ix, x, q = data
    bits = np.unpackbits(to_binary(x)[:, :16], axis=1).astype(np.int16)
    qbits = np.unpackbits(to_binary(q)[:, :16], axis=1).astype(np.int16)
    expected = 1 - 2 * (qbits[:, None, :] != bits[None]).sum(-1) / 128
    hits = ix.search_many(q, 10, exact=True, rescore="none", dimensions=128)
    for i, per_query in enumerate(hits):  # Hamming ties in any order: the scores are what must match
        assert [h.score for h in per_query] == pytest.approx(np.sort(expected[i])[::-1][:10])
        assert all(expected[i][int(h.id[1:])] == pytest.approx(h.score) for h in per_query)


def test_many_queries_are_scanned_in_groups_with_the_same_answers(data):
    ix, x, _ = data
    q = x[:1100] + 0.5 * np.random.default_rng(3).standard_normal((1100, DIM)).astype(np.float32)
    assert ids(ix.search_many(q, 3, exact=True, rescore="float")) == top(unit(q) @ unit(x).T, 3)


def test_filtered_exact_search_scans_only_matching_items(data):
    ix, x, q = data
    rows = np.arange(N)[np.arange(N) % 4 == 1]
    expected = top(unit(q) @ unit(x[rows]).T, 7, rows)
    hits = ix.search_many(q, 7, exact=True, rescore="float", filter={"part": 1})
    assert ids(hits) == expected and all(h.metadata == {"part": 1} for per in hits for h in per)


def test_matryoshka_first_stage_with_every_candidate_equals_exact(data):
    """Below the stored dimensions the first stage is a Hamming scan of the truncated bits; with every item a
    candidate, its int8 rescoring must give the exact int8 answer at that width."""
    ix, x, q = data
    assert ids(ix.search_many(q, 10, dimensions=128, candidates=N)) == \
        ids(ix.search_many(q, 10, dimensions=128, exact=True))
    few = ix.search_many(q, 10, dimensions=128, candidates=50)
    exact = ids(ix.search_many(q, 10, dimensions=128, exact=True))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(few), exact)])
    assert 0.3 <= recall <= 1.0  # a real two-stage search: a short candidate list may miss some


def test_timings_cover_every_stage(data):
    ix, _, q = data
    for options in ({}, {"exact": True}, {"dimensions": 128}, {"rescore": "none"}):
        timings: dict[str, float] = {}
        ix.search_many(q, 5, timings=timings, **options)
        assert set(timings) == {"embed", "first_stage", "rescore", "fetch"}, options
        assert timings["first_stage"] > 0 and timings["fetch"] > 0 and timings["embed"] == 0.0  # vector queries
        assert timings["rescore"] > 0 if options in ({}, {"dimensions": 128}) else True


def test_items_in_the_order_asked(data):
    ix, _, _ = data
    items = ix.items(["v9", "missing", "v2", "v9"])
    assert [(h.id, h.text, h.metadata) for h in items] == [("v9", "text 9", {"part": 1}), ("v2", "text 2", {"part": 2})]
    assert ix.items([]) == []
    with pytest.raises(InputError, match="list of strings"):
        ix.items("v1")
    with pytest.raises(InputError, match="must be non-empty strings"):
        ix.items([1])


@pytest.mark.parametrize("bad, message", [({"dimensions": 512}, "between 128 and 256"),
                                          ({"dimensions": 132}, "multiple of 8"),
                                          ({"dimensions": 64}, "between 128 and 256"),
                                          ({"dimensions": "128"}, "integer"),
                                          ({"exact": "yes"}, "true or false"),
                                          ({"exact": True, "rescore": "fp16"}, "rescore must be")])
def test_bad_search_options_are_input_errors(data, bad, message):
    ix, _, q = data
    with pytest.raises(InputError, match=message):
        ix.search_many(q, 5, **bad)


def test_exact_search_on_an_empty_index(tmp_path):
    with Index.create(tmp_path / "empty", "synthetic-model", 128) as ix:
        assert ix.search_many(np.ones((2, 128), np.float32), 3, exact=True) == [[], []]
        assert ix.search_many(np.ones((1, 128), np.float32), 3, exact=True, rescore="none") == [[]]


def test_a_matryoshka_index_searches_at_most_its_own_width(tmp_path):
    x = np.random.default_rng(1).standard_normal((20, 256)).astype(np.float32)
    with Index.create(tmp_path / "mrl", "synthetic-model", 128, full_dimension=256) as ix:
        ix.add(ids=[f"v{i}" for i in range(20)], vectors=x)
        assert ids(ix.search_many(x[:2], 1, exact=True)) == [["v0"], ["v1"]]
        with pytest.raises(InputError, match="at most this index's 128"):
            ix.search_many(x[:2], 1, dimensions=256)


def test_milvus_looks_up_items_and_refuses_scans(tmp_path):
    """A database backend answers items(); exact search needs the embedded index's scan: a clear error."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    x = np.random.default_rng(2).standard_normal((30, 128)).astype(np.float32)
    with Index.create(f"milvus:{tmp_path / 'm.db'}#items", "synthetic-model", 128) as ix:
        ix.add(ids=[f"v{i}" for i in range(30)], vectors=x, texts=[f"t{i}" for i in range(30)])
        assert [(h.id, h.text) for h in ix.items(["v4", "nope", "v1"])] == [("v4", "t4"), ("v1", "t1")]
        assert not ix.scans
        with pytest.raises(InputError, match="need the embedded index"):
            ix.search_many(x[:1], 3, exact=True)
