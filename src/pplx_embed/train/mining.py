"""Hard-negative mining with the current model, for the triplet stage.

For each pair, candidates are the corpus texts the model ranks highest for the query, skipping
the positive itself, near-duplicates of the positive (cosine to the positive ≥
``duplicate_threshold``) and, optionally, candidates scoring above ``max_score_ratio`` × the
positive's score (likely unlabeled positives).
"""

from __future__ import annotations

import logging

import numpy as np

from pplx_embed.embedder import Embedder
from pplx_embed.model.quantization import cosine_similarity
from pplx_embed.train.config import MiningConfig
from pplx_embed.train.data import Pair
from pplx_embed.train.evaluation import pooled

log = logging.getLogger(__name__)


def mine_hard_negatives(embedder: Embedder, pairs: list[Pair], corpus: list[str], config: MiningConfig,
                        progress: bool = False) -> list[Pair]:
    """Pairs with ``negatives`` set to ``config.num_negatives`` mined texts; pairs with too few are dropped.

    ``progress``: bars for embedding the corpus and the queries (the long part of mining).
    """
    was_training = embedder.model.training
    embedder.model.eval()
    corpus = list(dict.fromkeys(corpus))
    log.info("mining %d hard negative(s) per pair: ranking %d candidates for %d queries with the current model",
             config.num_negatives, len(corpus), len(pairs))
    try:
        corpus_vectors = pooled(embedder, corpus, "mining: candidates" if progress else None)
        query_vectors = pooled(embedder, [p.query for p in pairs], "mining: queries" if progress else None)
        row = {text: i for i, text in enumerate(corpus)}
        missing = list(dict.fromkeys(p.positive for p in pairs if p.positive not in row))
        extra = pooled(embedder, missing) if missing else corpus_vectors[:0]
        row.update({text: len(corpus) + i for i, text in enumerate(missing)})
        positive_vectors = np.concatenate([corpus_vectors, extra])[[row[p.positive] for p in pairs]]
    finally:
        embedder.model.train(was_training)
    out = []
    for start in range(0, len(pairs), 256):
        scores = cosine_similarity(query_vectors[start : start + 256], corpus_vectors)
        dup = cosine_similarity(positive_vectors[start : start + 256], corpus_vectors)
        positive_scores = np.sum(
            _unit(query_vectors[start : start + 256]) * _unit(positive_vectors[start : start + 256]), axis=1)
        for row, pair in enumerate(pairs[start : start + 256]):
            k = min(config.top_k, len(corpus))
            ranked = np.argsort(-scores[row])[:k]
            negatives = []
            for j in ranked:
                if corpus[j] == pair.positive or dup[row, j] >= config.duplicate_threshold:
                    continue
                if config.max_score_ratio is not None and scores[row,
                                                                 j] > config.max_score_ratio * positive_scores[row]:
                    continue
                negatives.append(corpus[j])
                if len(negatives) == config.num_negatives:
                    break
            if len(negatives) == config.num_negatives:
                out.append(Pair(pair.query, pair.positive, negatives, pair.lang, pair.query_lang, pair.positive_lang))
    log.info("mined %d negative(s) for %d of %d pairs; %d dropped (too few candidates below the positive's score "
             "that are not near-duplicates of it)", config.num_negatives, len(out), len(pairs), len(pairs) - len(out))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
