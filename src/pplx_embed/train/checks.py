"""Generalization checks of a fine-tune: what it did to sets it was not trained on.

A check is a BEIR directory (nDCG@10 × 100, e.g. ``xquad/en``, ``covidqa-ctx`` with chunks embedded
alone) or an STS ``.tsv`` file (Spearman × 100 of cosine against the gold scores, e.g.
``stsb/en-test.tsv``). ``pplx-embed finetune --check SET`` scores each before and after training, so
forgetting shows beside the in-domain gain. Every model is scored through the runtime engine (torch,
bf16 where the CPU computes it natively, else float32; right truncation), so models are compared alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pplx_embed.embedder import Embedder
from pplx_embed.errors import InputError
from pplx_embed.train.evaluation import load_eval_set, pooled, retrieval_scores


def check_name(path: str | Path) -> str:
    """``../shared/data/xquad/en`` → ``xquad/en``; ``.../stsb/en-test.tsv`` → ``stsb/en-test``."""
    path = Path(path)
    if path.is_file():
        return f"{path.parent.name}/{path.stem}"
    part_of_a_set = len(path.name) <= 3 or path.name in ("dev", "test")  # a language or split folder
    return f"{path.parent.name}/{path.name}" if part_of_a_set else path.name


def validate_checks(paths: list[str] | None) -> list[str]:
    """The check sets, each an existing BEIR directory or STS ``.tsv`` file (else an InputError naming it)."""
    out = []
    for p in paths or []:
        path = Path(p)
        if path.is_file() and path.suffix == ".tsv":
            out.append(str(path))
        elif path.is_dir() and (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file():
            out.append(str(path))
        else:
            raise InputError(f"--check {p}: not a BEIR directory (corpus.jsonl, queries.jsonl, qrels/) "
                             "nor an STS .tsv file")
    return out


def sts_spearman(embedder: Embedder, path: str | Path, progress: bool = False) -> float:
    """Spearman (× 100) of the cosine of each STS pair with its gold score."""
    from scipy.stats import spearmanr

    from pplx_embed.eval.datasets import load_sts

    ds = load_sts(path)
    both = pooled(embedder, ds.sentences1 + ds.sentences2, f"check {check_name(path)}" if progress else None)
    unit = both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    n = len(ds.scores)
    return 100.0 * float(spearmanr(np.sum(unit[:n] * unit[n:], axis=1), ds.scores).statistic)


def run_check(embedder: Embedder, path: str | Path, max_queries: int | None = None, max_corpus: int | None = None,
              seed: int = 0, progress: bool = False) -> float:
    """One check's score (× 100): nDCG@10 of a BEIR set (optionally a subset), or STS Spearman."""
    if Path(path).is_file():
        return sts_spearman(embedder, path, progress)
    data = load_eval_set(str(path), max_queries, max_corpus, seed)
    return 100.0 * retrieval_scores(embedder, data, progress=progress)["float@full"]["ndcg@10"]


def check_embedder(model: str, adapter: str | None = None) -> Embedder:
    """How every checked model is loaded: torch, bf16 where native on CPU (fp32 otherwise), GPU when present."""
    from pplx_embed.engine.backends import native_bf16
    from pplx_embed.engine.threads import cpu_flags

    return Embedder(model, backend="torch", dtype="bfloat16" if native_bf16(cpu_flags()) else None, adapter=adapter)


def run_checks(embedder: Embedder, paths: list[str], progress: bool = False) -> dict[str, float]:
    """Every check's score (× 100) for one model, by :func:`check_name`."""
    return {check_name(p): round(run_check(embedder, p, progress=progress), 2) for p in paths}
