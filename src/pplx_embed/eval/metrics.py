"""Retrieval metrics via ``pytrec_eval`` (trec_eval's C code): nDCG@10, Recall@k, MRR@10, MAP and
accuracy@1 (the share of queries whose best hit is relevant; trec_eval's ``success_1``).

Graded qrels are used as they are: nDCG uses the grade as gain (trec_eval's convention), the other
measures count a document relevant when its grade is > 0. Scores are means over all judged queries
with a relevant document; a query missing from the run scores 0.
"""

from __future__ import annotations

import pytrec_eval

from pplx_embed.errors import InputError

METRICS: tuple[str, ...] = ("ndcg@10", "accuracy@1", "recall@1", "recall@10", "recall@100", "recall@1000",
                            "mrr@10", "map")
_TREC = {"ndcg@10": "ndcg_cut_10", "accuracy@1": "success_1", "recall@1": "recall_1", "recall@10": "recall_10",
         "recall@100": "recall_100", "recall@1000": "recall_1000", "map": "map"}

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def _top(run: Run, k: int) -> Run:
    return {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:k]) for q, docs in run.items()}


def evaluate(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean of each metric in :data:`METRICS` over the queries of ``qrels`` that have a relevant doc.

    ``run`` maps query id → {doc id: score}; higher scores rank first (ties as trec_eval breaks them).
    MRR@10 is trec_eval's reciprocal rank on the run cut to its 10 best documents.
    """
    qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    if not qrels:
        raise InputError("qrels hold no query with a relevant document")
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "success.1", "recall.1,10,100,1000", "map"})
    full = full.evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_top(run, 10))
    totals = dict.fromkeys(METRICS, 0.0)
    for q in qrels:
        for name, trec in _TREC.items():
            totals[name] += full.get(q, {}).get(trec, 0.0)
        totals["mrr@10"] += cut.get(q, {}).get("recip_rank", 0.0)
    return {name: totals[name] / len(qrels) for name in METRICS}
