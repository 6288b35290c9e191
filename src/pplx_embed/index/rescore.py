"""The second stage of every store: the first stage's candidates reordered by the rescoring precision.

A store hands over each query's candidates (row numbers, or ids for a database backend) and a ``gather``
that reads the candidates' stored vectors; :func:`rescore` returns each query's best ``k`` with their
scores: cosine of the query's dense vector with the candidates' int8 codes (or float vectors), or, with
``rescore="none"``, the Hamming order with score ``1 - 2·hamming/dims``.

The candidates of several queries are gathered at once and scored with one batched float32 product per
~1M values, in the calling thread: no second thread pool to contend with the first stage's (docs/index.md,
"Rescoring").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pplx_embed.index.query import SearchQuery
from pplx_embed.model.quantization import hamming_distance

BLOCK_VALUES = 1 << 20  # candidate vector values gathered per batched product (4 MB as float32)
Gather = Callable[[np.ndarray, str], np.ndarray]  # (positions, precision) → stored vectors of those positions


def positions(candidates: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Candidates → ``([queries, n] int64 positions, -1 = none; the key at each position, or None)``.

    Row numbers (an int matrix padded with -1, or int arrays per query) are their own positions; other keys
    (a database's ids) are numbered in order of first appearance.
    """
    if isinstance(candidates, np.ndarray) and candidates.ndim == 2 and candidates.dtype.kind == "i":
        return candidates.astype(np.int64, copy=False), None
    numeric = all(c.dtype.kind in "iu" for c in candidates)
    keys: dict = {}
    width = max((len(c) for c in candidates), default=0)
    out = np.full((len(candidates), max(width, 1)), -1, dtype=np.int64)
    for i, cand in enumerate(candidates):
        if numeric:
            out[i, : len(cand)] = cand
        else:
            out[i, : len(cand)] = [keys.setdefault(key, len(keys)) for key in cand]
    return out, None if numeric else np.array(list(keys), dtype=object)


def rescore(query: SearchQuery, rows: np.ndarray, gather: Gather,
            inv_norms: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each query's best ``query.k`` of its candidate ``rows`` (``[queries, n]``, -1 = none) → (rows, scores),
    scored on the query's width (the first dimensions of the stored vectors).

    ``inv_norms(rows)`` gives the stored int8 rows' inverse norms where the store keeps them (used when the
    query is as wide as the stored rows; else norms are computed from the gathered codes).
    """
    valid = rows >= 0
    whole = bool(valid.all())  # the usual case: every slot a candidate
    nq, n = rows.shape
    scores = np.full((nq, n), -np.inf, dtype=np.float32)
    if whole or valid.any():
        safe = rows if whole else np.where(valid, rows, rows[valid][0])  # empty slots read a candidate's row
        step = max(1, BLOCK_VALUES // (n * query.width))
        for start in range(0, nq, step):
            part = slice(start, start + step)
            scores[part] = _scores(query, part, safe[part], gather, inv_norms)
        if not whole:
            scores[~valid] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, : query.k]
    at = np.arange(nq)[:, None]
    top, top_scores = rows[at, order], scores[at, order]
    if whole:
        return list(top), list(top_scores)
    keep = top >= 0
    return [r[m] for r, m in zip(top, keep)], [s[m] for s, m in zip(top_scores, keep)]


def _scores(query: SearchQuery, part: slice, rows: np.ndarray, gather: Gather,
            inv_norms: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Scores ``[queries of part, n]`` of one block of queries' candidates."""
    b, n = rows.shape
    if query.rescore == "none":
        width = query.binary.shape[1]
        codes = np.asarray(gather(rows.ravel(), "binary")).reshape(b, n, -1)[:, :, :width]
        distance = np.stack([hamming_distance(query.binary[part][i], codes[i])[0] for i in range(b)])
        return (1.0 - 2.0 * distance / (8 * width)).astype(np.float32)
    precision = "float" if query.rescore == "float" else "int8"
    q = np.asarray(query.floats if precision == "float" else query.dense, dtype=np.float32)[part]
    codes = np.asarray(gather(rows.ravel(), precision)).reshape(b, n, -1)
    whole = codes.shape[2] == query.width
    codes = codes[:, :, : query.width].astype(np.float32)
    scores = np.matmul(codes, q[:, :, None])[:, :, 0]
    if inv_norms is not None and precision == "int8" and whole:
        scores *= inv_norms(rows)
    else:
        scores /= np.maximum(np.linalg.norm(codes, axis=2), 1e-12)
    return scores / np.maximum(np.sqrt(np.einsum("ij,ij->i", q, q)), 1e-12)[:, None]
