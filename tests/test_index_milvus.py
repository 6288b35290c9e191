"""The Milvus backend on Milvus Lite: same VectorStore semantics and same results as the embedded index."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from pplx_embed.index import Index, IndexNotFoundError  # noqa: E402

DIM = 256


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), DIM)).astype(np.float32)
    return 0.3 * (centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32))


def test_milvus_lite_backend_matches_embedded(tmp_path):
    x = clustered(1500)
    ids = [f"v{i}" for i in range(1500)]
    meta = [{"color": ["red", "green", "blue"][i % 3], "n": i} for i in range(1500)]
    location = f"milvus:{tmp_path / 'm.db'}#items"
    mv = Index.create(location, "synthetic-model", DIM)
    emb = Index.create(str(tmp_path / "embedded"), "synthetic-model", DIM)
    for ix in (mv, emb):  # switching backends is configuration: the same calls on both
        ix.add(ids=ids, vectors=x, texts=[f"t{i}" for i in range(1500)], metadata=meta)
    q = x[:40] + 0.02 * np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)
    for kwargs in ({}, {"filter": {"color": "red"}}):
        a = mv.search_many(q, 10, **kwargs)
        b = emb.search_many(q, 10, **kwargs)
        overlap = np.mean([len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)])
        assert overlap >= 0.97, (kwargs, overlap)  # same exact first stage and rescoring; ties may differ
        assert all(h.metadata["color"] == "red" for hits in a for h in hits) if kwargs else True
    top = mv.search(x[3], 1)[0]
    assert (top.id, top.text, top.metadata) == ("v3", "t3", meta[3])

    with pytest.raises(ValueError, match="already in the index"):
        mv.add(ids=["v1"], vectors=x[:1])
    mv.upsert(ids=["v1"], vectors=x[2:3], metadata=[{"color": "none"}])
    assert {h.id for h in mv.search(x[2], 2)} == {"v1", "v2"} and len(mv) == 1500
    assert mv.delete(["v2", "nope"]) == 1 and len(mv) == 1499
    with pytest.raises(ValueError, match="have 128 dimensions"):
        mv.search(x[0, :128], 1)
    with pytest.raises(ValueError, match="model 'other'"):
        mv.add(ids=["z"], vectors=x[:1], model="other")
    mv.close()
    again = Index.open(location)
    assert again.model == "synthetic-model" and again.dimensions == DIM and len(again) == 1499
    assert again.search(x[7], 1)[0].id == "v7"
    again.close()
    with pytest.raises(IndexNotFoundError):
        Index.open(f"milvus:{tmp_path / 'm.db'}#missing")
    emb.close()
