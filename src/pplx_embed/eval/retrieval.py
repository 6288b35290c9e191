"""Exhaustive search at every output setting: float, int8, binary and binary + int8 rescoring, at
Matryoshka dimensions.

Vectors come from ``Embedder.encode`` and are cut / quantized with the core
``pplx_embed.model.quantization.quantize``; similarities are the core ``similarity`` (cosine for
float and int8, ``1 - 2·hamming/dim`` for packed binary).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pplx_embed.errors import InputError
from pplx_embed.model.quantization import quantize, similarity

PRECISIONS: tuple[str, ...] = ("float", "int8", "binary", "binary+rescore")
DEFAULT_RESCORE = 100


def bytes_per_vector(precision: str, dimensions: int) -> float:
    """Stored bytes per vector; binary + rescore keeps the bits for search and int8 for rescoring."""
    sizes = {"float": 4 * dimensions, "int8": dimensions, "binary": dimensions / 8,
             "binary+rescore": dimensions / 8 + dimensions}
    if precision not in sizes:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return sizes[precision]


@dataclass
class Embeddings:
    """One text set's full-width vectors, from which every (precision, dimensions) view is cut.

    ``float`` is the pooled output (or ``encode``'s float output: the same up to a positive factor
    per row, so every cosine and sign bit agrees) and ``int8`` is ``encode(..., "int8")``.
    Float and int8 are elementwise, so keeping the first d columns commutes with them; binary
    views are ``quantize(float, "binary", d)``.
    """

    float: np.ndarray
    int8: np.ndarray | None

    def view(self, precision: str, dimensions: int) -> np.ndarray:
        if precision == "float":
            return quantize(self.float, "float", dimensions)
        if precision == "int8":
            if self.int8 is None:
                raise RuntimeError("these embeddings were computed without their int8 output")
            return np.ascontiguousarray(self.int8[:, :dimensions])
        if precision in ("binary", "binary+rescore"):
            return quantize(self.float, "binary", dimensions)
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties: lower index first)."""
    n = scores.shape[1]
    k = min(k, n)
    cand = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), scores.shape)
    order = np.lexsort((cand, -np.take_along_axis(scores, cand, axis=1)))
    return np.take_along_axis(cand, order, axis=1)


def search(queries: Embeddings, docs: Embeddings, precision: str, dimensions: int, k: int = 1000,
           rescore: int = DEFAULT_RESCORE, block: int = 256) -> np.ndarray:
    """Indices ``[n_queries, min(k, n_docs)]`` of each query's best documents, best first.

    ``binary+rescore`` ranks by Hamming similarity, then re-orders the best ``rescore`` candidates
    by the int8 cosine of query and document (below them, the binary order is kept).
    """
    coarse = "binary" if precision == "binary+rescore" else precision
    q, d = queries.view(coarse, dimensions), docs.view(coarse, dimensions)
    ranked = np.concatenate([_top_k(similarity(q[i : i + block], d), k) for i in range(0, len(q), block)])
    if precision == "binary+rescore":
        q8, d8 = queries.view("int8", dimensions), docs.view("int8", dimensions)
        n = min(rescore, ranked.shape[1])
        for i, row in enumerate(ranked):
            fine = similarity(q8[i : i + 1], d8[row[:n]])[0]
            row[:n] = row[:n][np.argsort(-fine, kind="stable")]
    return ranked


def to_run(ranked: np.ndarray, query_ids: list[str], doc_ids: list[str]) -> dict[str, dict[str, float]]:
    """A trec-style run ``{query id: {doc id: score}}`` from :func:`search` output.

    Scores are strictly decreasing by rank so evaluation keeps exactly this order (trec_eval would
    otherwise break ties in similarity by document id).
    """
    k = ranked.shape[1]
    return {qid: {doc_ids[j]: float(k - r) for r, j in enumerate(row)} for qid, row in zip(query_ids, ranked)}
