"""Retrieval evaluation of the model being trained, through the runtime's own ``Embedder.encode``.

Scores are nDCG@10 etc. from ``pplx_embed.eval.metrics`` on a BEIR directory, optionally on a
subset: ``max_queries`` random queries, and a corpus of all their relevant rows plus random other
rows up to ``max_corpus``. Several output views (quantization × Matryoshka dims) can be scored
from one encoding pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pplx_embed.embedder import Embedder
from pplx_embed.errors import InputError
from pplx_embed.model.pooling import Sequence
from pplx_embed.model.quantization import quantize, similarity

View = tuple[str, int | None]  # (quantization, dimensions)


@dataclass
class EvalSet:
    name: str
    query_ids: list[str]
    query_texts: list[str]
    corpus_ids: list[str]
    corpus_texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_eval_set(path: str, max_queries: int | None = None, max_corpus: int | None = None, seed: int = 0) -> EvalSet:
    """A BEIR directory, optionally subsampled (all relevant rows of the kept queries always stay)."""
    from pplx_embed.eval.datasets import load_beir

    data = load_beir(path)
    rng = random.Random(seed)
    queries = [i for i, q in enumerate(data.query_ids) if any(g > 0 for g in data.qrels.get(q, {}).values())]
    if max_queries is not None and len(queries) > max_queries:
        queries = sorted(rng.sample(queries, max_queries))
    qids = [data.query_ids[i] for i in queries]
    qrels = {q: data.qrels[q] for q in qids}
    relevant = {d for q in qids for d, g in qrels[q].items() if g > 0}
    rows = [i for i, c in enumerate(data.corpus_ids) if c in relevant]
    if max_corpus is not None and max_corpus > len(rows):
        others = [i for i, c in enumerate(data.corpus_ids) if c not in relevant]
        rows = sorted(rows + rng.sample(others, min(len(others), max_corpus - len(rows))))
    elif max_corpus is None:
        rows = list(range(len(data.corpus_ids)))
    return EvalSet(data.name, qids, [data.query_texts[i] for i in queries],
                   [data.corpus_ids[i] for i in rows], [data.corpus_texts[i] for i in rows], qrels)


def parse_view(text: str) -> View:
    """``"int8"`` → ``("int8", None)``, ``"binary@128"`` → ``("binary", 128)``."""
    quantization, _, dims = text.partition("@")
    if quantization not in ("float", "int8", "binary") or (dims and not dims.isdigit()):
        raise InputError(f"bad evaluation view {text!r}: use float|int8|binary, optionally @<dims>")
    return quantization, int(dims) if dims else None


def retrieval_scores(embedder: Embedder, data: EvalSet, views: list[View] = (("float", None),),
                     top_k: int = 100, progress: bool = False) -> dict[str, dict[str, float]]:
    """Metrics per view name (``float@full``, ``int8@full``, ``binary@128`` …) for ``embedder``'s current weights.

    Texts longer than the model's limit are right-truncated; ``progress`` shows a bar per pass.
    """
    from pplx_embed.eval.metrics import evaluate
    from pplx_embed.train.losses import view_name

    was_training = embedder.model.training
    embedder.model.eval()
    try:
        queries = pooled(embedder, data.query_texts, f"eval {data.name}: queries" if progress else None)
        corpus = pooled(embedder, data.corpus_texts, f"eval {data.name}: corpus" if progress else None)
    finally:
        embedder.model.train(was_training)
    out = {}
    for quantization, dims in views:
        q = quantize(queries, quantization, dims)
        c = quantize(corpus, quantization, dims)
        scores = similarity(q, c)
        k = min(top_k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        run = {qid: {data.corpus_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(data.query_ids)}
        out[view_name(dims, quantization)] = evaluate(data.qrels, run)
    return out


def pooled(embedder: Embedder, texts: list[str], progress: str | None = None, block: int = 512) -> np.ndarray:
    """Raw pooled vectors from the runtime's engine, before normalization or quantization.

    Cosine scores ignore normalization, and ``quantize`` of these is exactly what
    ``Embedder.encode(quantization=..., dimensions=...)`` returns, so every view is scored from one pass.
    ``progress``: the label of a progress bar (texts embedded), shown when given.
    """
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(texts), desc=progress, unit="text", disable=progress is None, leave=False) as bar:
        for start in range(0, len(texts), block):
            part = texts[start : start + block]
            sequences = [Sequence(ids) for ids in embedder.tokenize(part, truncation="right")]
            out.extend(embedder.engine.run(sequences))
            bar.update(len(part))
    return np.concatenate(out) if out else np.zeros((0, embedder.dimension), np.float32)
