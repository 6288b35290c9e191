"""The embedded index: add / upsert / delete / filters / compaction / persistence / errors."""

from __future__ import annotations

import numpy as np
import pytest

from pplx_embed.index import Index, IndexNotFoundError
from pplx_embed.index.embedded import (
    COARSE_RESCORE,
    NPROBE,
    PROBE_BUDGET_US,
    PROBE_NPROBES,
    PROBE_RESCORES,
    PROBE_RULE,
    PROBE_SHARE,
    SPILL_SHARES,
    plan_lists,
    probe_cost,
    retrain_due,
    train_rows,
)
from pplx_embed.model.quantization import to_binary, to_int8

DIM = 256


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return 0.3 * x  # the scale of pooled pplx vectors: tanh (int8) does not saturate


def exact_top(q: np.ndarray, x: np.ndarray, k: int = 10) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.argsort(-(q @ xn.T), axis=1)[:, :k]


@pytest.fixture
def index(tmp_path):
    ix = Index.create(str(tmp_path / "ix"), "synthetic-model", DIM, store_float=True)
    yield ix
    ix.close()


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_add_search_and_reopen(tmp_path, index):
    x = clustered(3000)
    meta = [{"group": i % 3, "lang": "en" if i % 2 else "de"} for i in range(3000)]
    assert index.add(ids=ids("v", 3000), vectors=x, texts=[f"text {i}" for i in range(3000)], metadata=meta) == 3000
    hits = index.search(x[42], k=5)
    assert hits[0].id == "v42" and hits[0].text == "text 42" and hits[0].metadata == meta[42]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    stored = index.get(["v42"], "int8")["v42"]
    assert np.array_equal(stored, to_int8(x[42]))
    assert np.array_equal(index.get(["v42"], "binary")["v42"], to_binary(x[42]))
    index.close()
    again = Index.open(str(tmp_path / "ix"))
    assert len(again) == 3000 and again.search(x[42], k=1)[0].id == "v42"
    stats = again.stats()
    assert stats["model"] == "synthetic-model" and stats["dimensions"] == DIM and stats["items"] == 3000
    assert stats["bytes_per_vector"] == {"binary": DIM // 8, "int8": DIM, "float": 4 * DIM}
    again.close()


def test_rescoring_modes_agree_with_exact_search(index):
    x = clustered(2000, seed=1)
    index.add(ids=ids("v", 2000), vectors=x)
    q = x[:20] + 0.1 * np.random.default_rng(2).standard_normal((20, DIM)).astype(np.float32)
    # exact search in each rescoring metric: cosine of floats, cosine of tanh (what int8 codes round)
    for mode, exact, floor in (("float", exact_top(q, x), 0.98), ("int8", exact_top(np.tanh(q), np.tanh(x)), 0.97)):
        rows, scores = index.search_rows(q, 10, rescore=mode)
        recall = np.mean([len(set(r.tolist()) & set(e.tolist())) / 10 for r, e in zip(rows, exact)])
        assert recall >= floor, (mode, recall)
    hamming = index.search_many(q[:2], 3, rescore="none")
    assert all(-1 <= h.score <= 1 for hits in hamming for h in hits)


def test_add_refuses_existing_ids_and_upsert_replaces(index):
    x = clustered(100)
    index.add(ids=ids("v", 100), vectors=x, metadata=[{"n": i} for i in range(100)])
    with pytest.raises(ValueError, match="already in the index.*upsert"):
        index.add(ids=["new", "v3"], vectors=x[:2])
    assert len(index) == 100 and not index.get(["new"])  # the failed batch wrote nothing
    y = clustered(2, seed=9)
    index.upsert(ids=["v3", "fresh"], vectors=y, metadata=[{"n": -3}, {"n": 1000}])
    assert len(index) == 101
    assert index.search(y[0], 1)[0].id == "v3" and index.search(y[0], 1)[0].metadata == {"n": -3}
    assert index.search(x[3], 1)[0].id != "v3" or index.search(x[3], 1)[0].score < 0.99
    assert index.stats()["tombstones"] == 1


def test_delete_filter_and_compact(index):
    x = clustered(600)
    meta = [{"color": ["red", "green", "blue"][i % 3], "even": i % 2 == 0, "n": i} for i in range(600)]
    index.add(ids=ids("v", 600), vectors=x, metadata=meta)
    assert index.delete(["v1", "v2", "missing"]) == 2
    assert "v1" not in {h.id for h in index.search(x[1], 50)}
    red = index.search(x[4], 20, filter={"color": "red"})
    assert red and all(h.metadata["color"] == "red" for h in red) and len(red) == 20
    both = index.search(x[4], 20, filter={"color": "red", "even": True})
    assert both and all(h.metadata["color"] == "red" and h.metadata["even"] is True for h in both)
    assert index.search(x[7], 5, filter={"n": 7})[0].id == "v7"
    assert index.search(x[7], 5, filter={"color": "purple"}) == []
    assert index.compact() == 2
    assert index.stats()["tombstones"] == 0 and len(index) == 598
    assert index.search(x[300], 1)[0].id == "v300"
    assert np.array_equal(index.get(["v599"], "int8")["v599"], to_int8(x[599]))
    with pytest.raises(ValueError, match="filter key"):
        index.search(x[0], 5, filter={"bad key'": 1})
    with pytest.raises(ValueError, match="filter value"):
        index.search(x[0], 5, filter={"color": ["red"]})


def test_matryoshka_dims_and_int8_input(tmp_path):
    ix = Index.create(str(tmp_path / "mrl"), "synthetic-model", 128, full_dimension=DIM)
    x = clustered(300)
    ix.add(ids=ids("v", 300), vectors=x)  # full-dimension vectors are truncated to 128
    assert np.array_equal(ix.get(["v5"])["v5"], to_int8(x[5, :128]))
    assert ix.search(x[5, :128], 1)[0].id == "v5"
    ix.add(ids=["q"], vectors=to_int8(x[6:7]))  # int8 input (what the hosted API returns)
    assert ix.search(to_int8(x[6]), 2)[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="have 64 dimensions.*takes 128 or 256"):
        ix.search(x[0, :64], 1)
    ix.close()


def test_bad_input_and_model_mismatch_give_clear_errors(tmp_path, index, tiny_pplx, minilm):
    x = clustered(10)
    index.add(ids=ids("v", 10), vectors=x)
    with pytest.raises(ValueError, match="model 'other'.*'synthetic-model'"):
        index.add(ids=["z"], vectors=x[:1], model="other")
    with pytest.raises(ValueError, match="model 'other'"):
        index.search(x[0], 3, model="other")
    with pytest.raises(ValueError, match="k must be an integer from 1 to"):
        index.search(x[0], 0)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(DIM, np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="2 ids but 1 vectors"):
        index.add(ids=["a", "b"], vectors=x[:1])
    with pytest.raises(ValueError, match="ids repeat"):
        index.add(ids=["a", "a"], vectors=x[:2])
    with pytest.raises(IndexNotFoundError, match="no index at"):
        Index.open(str(tmp_path / "nowhere"))
    with pytest.raises(FileExistsError):
        Index.create(str(tmp_path / "ix"), "synthetic-model", DIM)
    with pytest.raises(ValueError, match="multiple of 8"):
        Index.create(str(tmp_path / "odd"), "m", 100)
    # an index remembers its model: another model's embedder is refused, for writing and for queries
    path = str(tmp_path / "tiny")
    Index.create(path, tiny_pplx.name, embedder=tiny_pplx).close()
    with pytest.raises(ValueError, match="cannot use the embedder"):
        Index.open(path, embedder=minilm)
    ix = Index.open(path, embedder=tiny_pplx)
    ix.add(["alpha beta", "gamma delta"], ids=["a", "g"])
    assert ix.search("alpha beta", 1)[0].id == "a"
    with pytest.raises(ValueError, match="have 384 dimensions"):
        ix.search(minilm.encode("alpha beta"), 1)
    with pytest.raises(ValueError, match="query 0 is empty"):
        ix.search("   ", 1)
    with pytest.raises(ValueError, match="give at least one query"):
        ix.search_many([], 1)
    ix.close()


def test_contextual_documents(tmp_path, tiny_pplx):
    ix = Index.create(str(tmp_path / "ctx"), tiny_pplx.name, embedder=tiny_pplx, contextual=True)
    docs = [["The cat sat.", "It was on the mat.", "Then it slept."], ["Rockets fly.", "They burn fuel."]]
    assert ix.add_documents(docs, ["d1", "d2"], metadata=[{"src": "a"}, {"src": "b"}]) == 5
    expected = tiny_pplx.encode_contextual(docs)
    hit = ix.search(expected[0][1], 1)[0]
    assert (hit.id, hit.doc_id, hit.position, hit.text, hit.metadata) == (
        "d1#1", "d1", 1, "It was on the mat.", {"src": "a"})
    assert ix.search(expected[1][0], 1)[0].doc_id == "d2"
    hits = ix.search("Rockets fly.", 5)
    assert {h.doc_id for h in hits} == {"d1", "d2"} and all(h.position is not None for h in hits)
    # re-adding a document replaces all of its chunks
    ix.add_documents([["A new first chunk.", "And a second."]], ["d1"])
    assert len(ix) == 4 and ix.stats()["documents"] == 2
    assert {h.id for h in ix.search("Rockets fly.", 10)} == {"d1#0", "d1#1", "d2#0", "d2#1"}
    ix.close()


def test_ivf_first_stage_with_filters_and_tombstones(tmp_path):
    path = str(tmp_path / "ivf")
    ix = Index.create(path, "synthetic-model", DIM, first_stage="ivf")
    x = clustered(12_000, seed=3)
    ix.add(ids=ids("v", 12_000), vectors=x, metadata=[{"rare": i % 1000 == 0} for i in range(12_000)])
    assert ix.stats()["first_stage_index"] == "IndexBinaryFlat" and ix.needs_compaction  # exact until trained
    assert ix.compact() == 0  # nothing to drop, but the inverted file is trained
    stats = ix.stats()
    lists = int(2 * np.sqrt(12_000))
    assert (stats["first_stage_index"], stats["lists"]) == ("IndexBinaryIVF", lists)
    assert stats["nprobe"] in PROBE_NPROBES and stats["coarse_rescore"] in PROBE_RESCORES  # calibrated on its rows
    assert not stats["retrain_due"] and not ix.needs_compaction and ix.compact() == 0
    # codes + inverse norm + faiss's row id + the centroids (2·√n of them: float32, float16 and sign bits) shared
    share = (4 * DIM + 2 * DIM + DIM // 8) * lists / 12_000
    assert 32 + 4 + 8 + share - 0.05 < stats["search_structure_bytes_per_vector"] < 32 + 4 + 8 + share + 0.1
    exact = exact_top(np.tanh(x[:50]), np.tanh(x))
    rows, _ = ix.search_rows(x[:50], 10)
    assert np.mean([len(set(r.tolist()) & set(e.tolist())) / 10 for r, e in zip(rows, exact)]) >= 0.95
    rare = ix.search(x[5], 10, filter={"rare": True})  # 12 matching rows: exact fallback over them
    assert len(rare) == 10 and all(h.metadata["rare"] for h in rare)
    ix.delete(["v5"])
    ix.add(ids=["late"], vectors=x[5:6])  # added after training: assigned to its list as it is written
    assert ix.search(x[5], 1)[0].id == "late" and "v5" not in {h.id for h in ix.search(x[5], 20)}
    before, _ = ix.search_rows(x[:50], 10)
    ix.close()
    ix = Index.open(path)  # the trained stage and every row's list are stored: reopening gives the same results
    assert sorted(p.name for p in (tmp_path / "ivf").glob("vectors.*")) == [f"vectors.1.{s}" for s in
                                                                             ("binary", "int8", "lists")]
    after, _ = ix.search_rows(x[:50], 10)
    assert all(np.array_equal(a, b) for a, b in zip(after, before))
    assert ix.check()["blocks_verified"]["lists"] == -(-12_001 // 128)
    ix.close()


def test_the_first_stage_follows_the_size_and_compaction_retrains_it(tmp_path):
    """auto: exact below 50,000 rows, an inverted file of 2·√n lists above; compaction trains again when the
    index has grown or shrunk 4x; rows added in between go to the trained lists."""
    assert [plan_lists(n, "auto") for n in (0, 49_999, 50_000, 1_000_000, 10_000_000)] == [0, 0, 447, 2000, 6324]
    assert plan_lists(10_000, "ivf") == 200 and plan_lists(9_999, "ivf") == 0 and plan_lists(10**8, "flat") == 0
    assert [retrain_due(t, w) for t, w in ((0, 0), (0, 447), (447, 0), (447, 800), (447, 894), (2000, 999))] == [
        False, True, True, False, True, True]
    # k-means sees 128 rows per list, at most 3 GiB of float32: all rows of a small index, 786,432 of 10M x 1024;
    # a stage trained on less than half of that (an earlier version's 40 per list) is trained again
    assert [train_rows(30_000, 447, 1024), train_rows(10**7, 6324, 1024), train_rows(10**7, 6324, 512)] == [
        30_000, 786_432, 809_472]
    assert retrain_due(6324, 6324, 252_960, 1024) and not retrain_due(6324, 6324, 786_432, 1024)
    dim = 64
    x = clustered(60_000, seed=4, dim=dim)

    def grow(ix, stop: int) -> None:
        for first in range(len(ix), stop, 20_000):
            last = min(first + 20_000, stop)
            ix.add(ids=ids("v", last)[first:], vectors=x[first:last])

    def recall(ix, n: int) -> float:
        q = x[: n : n // 40]
        rows, _ = ix.search_rows(q, 10)
        exact = exact_top(np.tanh(q), np.tanh(x[:n]))
        return np.mean([len(set(r.tolist()) & set(e.tolist())) / 10 for r, e in zip(rows, exact)])

    ix = Index.create(str(tmp_path / "auto"), "synthetic-model", dim)
    assert ix.stats()["first_stage"] == "auto"
    grow(ix, 40_000)
    assert ix.compact() == 0 and ix.stats()["generation"] == 0  # small: exact, nothing to do
    exact_recall = recall(ix, 40_000)  # the exact first stage with 64 sign bits: the bar for the inverted file
    grow(ix, 60_000)
    assert ix.stats()["first_stage_index"] == "IndexBinaryFlat" and ix.needs_compaction
    ix.compact()
    stats = ix.stats()
    assert (stats["first_stage_index"], stats["lists"], stats["generation"]) == (
        "IndexBinaryIVF", plan_lists(60_000, "auto"), 1)
    assert recall(ix, 60_000) >= exact_recall - 0.05  # lists found as calibrated
    ix.nprobe, ix.coarse_rescore = 32, 0  # or as set on the handle: cosine to every centroid
    assert (ix.stats()["nprobe"], ix.stats()["coarse_rescore"]) == (32, 0)
    assert recall(ix, 60_000) >= exact_recall - 0.05
    ix.close()
    ix = Index.open(str(tmp_path / "auto"))  # another process's view: the committed coarse stage and lists
    assert recall(ix, 60_000) >= exact_recall - 0.05 and ix.check()["items"] == 60_000
    ix.delete(ids("v", 60_000)[20_000:])  # shrunk below the inverted file's size: back to an exact scan
    assert ix.needs_compaction and ix.compact() == 40_000
    stats = ix.stats()
    assert (stats["first_stage_index"], stats["lists"], stats["items"]) == ("IndexBinaryFlat", None, 20_000)
    assert recall(ix, 20_000) >= exact_recall and not list((tmp_path / "auto").glob("vectors.*.lists"))
    ix.close()

    ix = Index.create(str(tmp_path / "ivf"), "synthetic-model", dim, first_stage="ivf")  # trained from 10,000 rows
    grow(ix, 12_000)
    ix.compact()
    assert ix.stats()["lists"] == plan_lists(12_000, "ivf")
    grow(ix, 40_000)  # rows added after training go to its lists; 3.3x is not yet worth training again
    assert not ix.needs_compaction and ix.compact() == 0 and ix.stats()["lists"] == plan_lists(12_000, "ivf")
    assert recall(ix, 40_000) >= exact_recall - 0.05
    grow(ix, 50_000)
    assert ix.needs_compaction and ix.compact() == 0
    assert ix.stats()["lists"] == plan_lists(50_000, "ivf") and recall(ix, 50_000) >= exact_recall - 0.05
    ix.close()


def test_compaction_calibrates_the_probe_on_the_index_rows(tmp_path):
    """Compaction picks the cheapest probe (nprobe, coarse_rescore) whose lists hold PROBE_SHARE of sample rows'
    true top 10; it holds for other rows, loses at most a point of recall to probing every list, is stored with
    the stage, and an index without one (trained by an earlier version) is calibrated by its next compaction."""
    import sqlite3

    dim, n = 64, 60_000
    x = clustered(n, seed=4, dim=dim)
    path = tmp_path / "ix"
    ix = Index.create(str(path), "synthetic-model", dim, first_stage="ivf")
    ix.add(ids=ids("v", n), vectors=x)
    ix.compact()
    stats = ix.stats()
    probe = (stats["nprobe"], stats["coarse_rescore"])
    assert probe[0] in PROBE_NPROBES and probe[1] in PROBE_RESCORES and stats["probe_share"] >= PROBE_SHARE
    assert probe != (NPROBE, COARSE_RESCORE) and not ix.needs_compaction  # clustered: cheaper than the default

    q = x[7::150]  # 400 rows, other than the calibration's random sample for the most part: their int8 top 10
    codes = to_int8(x).astype(np.float32)
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    truth = np.argsort(-(unit[7::150] @ unit.T), axis=1)[:, :10]
    lists = np.fromfile(next(path.glob("vectors.*.lists")), dtype=np.int32)
    found = ix._coarse.probe(unit[7::150], *probe)
    assert np.mean([np.isin(lists[t], f).mean() for t, f in zip(truth, found)]) >= PROBE_SHARE - 0.02

    def recall() -> float:
        rows, _ = ix.search_rows(q, 10)
        return np.mean([len(set(r.tolist()) & set(t.tolist())) / 10 for r, t in zip(rows, truth)])

    calibrated = recall()
    ix.nprobe, ix.coarse_rescore = stats["lists"], 0  # every list: what probing cannot lose
    assert calibrated >= recall() - 0.01
    ix.close()

    sql = sqlite3.connect(path / "index.sqlite")
    with sql:
        sql.execute("DELETE FROM probe")  # as an earlier version left its trained stage
    sql.close()
    ix = Index.open(str(path))
    stats = ix.stats()
    assert (stats["nprobe"], stats["coarse_rescore"], stats["probe_share"]) == (NPROBE, COARSE_RESCORE, None)
    assert ix.needs_compaction and not stats["retrain_due"]
    assert ix.compact() == 0  # nothing dropped, nothing trained: calibrated
    after = ix.stats()
    assert (after["nprobe"], after["coarse_rescore"]) == probe and after["generation"] == stats["generation"] + 1
    assert after["trained_rows"] == stats["trained_rows"] and not ix.needs_compaction and ix.compact() == 0
    ix.close()

    sql = sqlite3.connect(path / "index.sqlite")
    with sql:
        sql.execute("DELETE FROM probe_rule")  # calibrated by the rule before this one
    sql.close()
    with Index.open(str(path)) as ix:
        assert ix._coarse.probe_setting.rule == 1 and ix.needs_compaction and ix.stats()["nprobe"] == probe[0]
        assert ix.compact() == 0 and ix._coarse.probe_setting.rule == PROBE_RULE and not ix.needs_compaction
    with Index.open(str(path)) as ix:  # stored: another process probes the same way
        assert (ix.stats()["nprobe"], ix.stats()["coarse_rescore"]) == probe and recall() == calibrated
        assert ix.stats()["spilled"] == 0  # the cheapest probe needs no spilling


def test_a_partition_that_loses_neighbours_spills_the_ambiguous_rows(tmp_path):
    """Rows without clusters: no probe holds 99% of the neighbours, so the calibration takes the one holding the
    most: the most lists, and the partition spills the most ambiguous rows into their second-nearest list too.
    Queries find true neighbours through those lists, never a row twice; rows added later spill by the same
    threshold; a stage trained before spilling decides at its next compaction without re-training."""
    import sqlite3

    dim, n = 64, 12_000
    x = np.random.default_rng(5).standard_normal((n + 3_000, dim)).astype(np.float32)
    path = tmp_path / "noise"
    ix = Index.create(str(path), "synthetic-model", dim, first_stage="ivf")
    ix.add(ids=ids("n", n), vectors=x[:n])
    ix.compact()
    stats = ix.stats()
    assert (stats["nprobe"], stats["coarse_rescore"]) == (max(PROBE_NPROBES), 0)
    assert 0 < stats["probe_share"] < PROBE_SHARE and abs(stats["spilled"] - max(SPILL_SHARES)) < 0.001

    codes = to_int8(x[:n]).astype(np.float32)
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    q = unit[7::30]  # 400 rows: their int8 top 10 (themselves included)
    truth = np.argsort(-(q @ unit.T), axis=1)[:, :10]
    lists = np.fromfile(next(path.glob("vectors.*.lists")), dtype=np.int32)
    spills = np.fromfile(next(path.glob("vectors.*.spill")), dtype=np.int32)
    found = ix._coarse.probe(q, stats["nprobe"], stats["coarse_rescore"])
    first_only = np.mean([np.isin(lists[t], f).mean() for t, f in zip(truth, found)])
    either = np.mean([(np.isin(lists[t], f) | np.isin(spills[t], f)).mean() for t, f in zip(truth, found)])
    assert either > first_only + 0.01 and abs(either - stats["probe_share"]) < 0.05

    rows, _ = ix.search_rows(x[7:n:30], 10)
    assert all(len(set(r.tolist())) == len(r) == 10 for r in rows)  # a row in two probed lists comes once
    ix.nprobe = 1  # a query at a list's centroid finds the list's rows and the rows spilled into it, each once
    target = int(spills[spills >= 0][0])
    members = np.flatnonzero((lists == target) | (spills == target))
    rows, _ = ix.search_rows(ix._coarse.exact.reconstruct(target)[None, :], len(members) + 50)
    assert sorted(rows[0].tolist()) == members.tolist() and np.any(lists[members] != target)
    ix.nprobe = None

    ix.add(ids=ids("m", 3_000), vectors=x[n:])  # assigned as written, spilled by the stored threshold
    pairs, ratios = ix._coarse.nearest(to_int8(x[n:]))
    spills = np.fromfile(next(path.glob("vectors.*.spill")), dtype=np.int32)
    assert np.array_equal(spills[n:], np.where(ratios >= ix._coarse.spill, pairs[:, 1], -1))
    assert np.any(spills[n:] >= 0) and np.any(spills[n:] < 0)
    assert [h.id for h in ix.search(x[n + 5], 1)] == ["m5"]
    ix.close()

    sql = sqlite3.connect(path / "index.sqlite")
    with sql:  # as an earlier version left its trained stage: no spill table, no spill lists
        sql.execute("DROP TABLE spill")
        sql.execute("DELETE FROM blocks WHERE precision = 'spill'")
    sql.close()
    next(path.glob("vectors.*.spill")).unlink()
    with Index.open(str(path)) as ix:
        before = ix.stats()
        assert before["spilled"] == 0 and ix.needs_compaction and not before["retrain_due"]
        assert ix.compact() == 0  # nothing dropped, nothing trained: spilled again
        after = ix.stats()
        assert after["trained_rows"] == before["trained_rows"] and after["spilled"] == stats["spilled"]
        assert not ix.needs_compaction


def test_the_calibration_keeps_the_probe_within_its_time_budget():
    """The same lists and neighbours, seen as a small index and as one of 8M rows: the small one probes as
    many lists as it takes (every option is cheap), the large one the best within PROBE_BUDGET_US, which buys
    fewer of the neighbours; the default, 32 lists by cosine with 20% spilled, is the budget at 10M x 1024."""
    from pplx_embed.index.embedded import _Coarse

    dim = 64
    x = to_int8(np.random.default_rng(8).standard_normal((6_000, dim)).astype(np.float32))
    coarse = _Coarse.train(x, 150)
    unit = x / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    truth = np.argsort(-(unit[:300] @ unit.T), axis=1)[:, 1:11]  # 300 rows' top 10, themselves excluded
    pairs, ratios = coarse.nearest(x)
    threshold = float(np.quantile(ratios, 0.8))
    true_lists = {0.0: np.stack([pairs[truth, 0], np.full(truth.shape, -1)], -1),
                  0.2: np.stack([pairs[truth, 0], np.where(ratios[truth] >= threshold, pairs[truth, 1], -1)], -1)}
    small, _ = coarse.calibrate(unit[:300], true_lists, 6_000)
    large, spilled = coarse.calibrate(unit[:300], true_lists, 8_000_000)
    assert small.nprobe == max(PROBE_NPROBES) and small.share > large.share
    assert probe_cost(150, dim, 8_000_000, large.nprobe, large.coarse_rescore, spilled) <= PROBE_BUDGET_US
    assert probe_cost(150, dim, 8_000_000, 2 * large.nprobe, large.coarse_rescore, spilled) > PROBE_BUDGET_US
    assert abs(probe_cost(6_324, 1_024, 10_000_000, NPROBE, COARSE_RESCORE, 0.2) - PROBE_BUDGET_US) < 100


def test_the_calibration_finds_the_exact_neighbours_as_rows_stream_past():
    """The true top 10 of the calibration's rows (themselves excluded) over rows seen span by span, spans with
    no live rows among them, are those of a brute-force search."""
    from pplx_embed.index.embedded import _TrueNeighbours

    codes = to_int8(clustered(5_000, seed=6, dim=32))
    picked = np.array([3, 100, 2_500, 4_999])
    truth = _TrueNeighbours(picked, codes[picked])
    for start in range(0, 5_000, 700):
        truth.see(codes[start : start + 700])
        truth.see(codes[:0])  # a span whose rows were all deleted
    unit = codes.astype(np.float32) / np.linalg.norm(codes.astype(np.float32), axis=1, keepdims=True)
    scores = unit[picked] @ unit.T
    scores[np.arange(len(picked)), picked] = -np.inf
    assert np.array_equal(np.sort(truth.rows, 1), np.sort(np.argsort(-scores, axis=1)[:, :10], 1))
