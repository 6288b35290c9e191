"""Domain fine-tuning: query/positive pairs → a better checkpoint for your own data.

The pair stage with the defaults that suit 10k–50k in-domain pairs: in-batch InfoNCE with
false-negative masking (plus QAT / MRL views on request), evaluation before training and after
each epoch (or every N steps), early stopping, and the best checkpoint kept. The evaluation set is
a BEIR directory or a held-out slice of the training pairs (``holdout``: the honest choice when the
dev set is the one you report). ``hard_negatives`` mines that many negatives per pair with the
starting model (the triplet stage). Works for any checkpoint ``Embedder`` loads (MiniLM, pplx-embed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pplx_embed.atomic import write_text
from pplx_embed.errors import InputError
from pplx_embed.train.config import StageConfig, stage_config
from pplx_embed.train.contrastive import train_stage
from pplx_embed.train.data import Pair, load_pairs


def split_holdout(train: str, count: int, out_dir: str | Path, seed: int = 0) -> tuple[str, str]:
    """Hold ``count`` random pairs of ``train`` out as a BEIR directory; write the rest as the training file.

    Pairs that share a query or a positive text with a held-out pair are left out of training too,
    so no held-out answer is ever trained on. Returns ``(training JSONL, BEIR directory)`` under
    ``out_dir``; the split depends only on the file and ``seed`` (a resumed run gets the same one).
    """
    pairs = load_pairs(train)
    if not 0 < count < len(pairs):
        raise InputError(f"--holdout must be between 1 and {len(pairs) - 1} (the file has {len(pairs)} pairs), "
                         f"not {count}")
    held = random.Random(seed).sample(range(len(pairs)), count)
    held_pairs = [pairs[i] for i in sorted(held)]
    texts = {p.query for p in held_pairs} | {p.positive for p in held_pairs}
    rest = [p for p in pairs if p.query not in texts and p.positive not in texts]
    out_dir = Path(out_dir)
    doc_ids: dict[str, str] = {}
    for p in held_pairs:
        doc_ids.setdefault(p.positive, f"d{len(doc_ids)}")
    beir = out_dir / "holdout"
    write_text(beir / "corpus.jsonl", "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                              for t, i in doc_ids.items()))
    queries = list(dict.fromkeys(p.query for p in held_pairs))
    write_text(beir / "queries.jsonl", "".join(json.dumps({"_id": f"q{n}", "text": q}) + "\n"
                                               for n, q in enumerate(queries)))
    query_ids = {q: f"q{n}" for n, q in enumerate(queries)}
    qrels = dict.fromkeys((query_ids[p.query], doc_ids[p.positive]) for p in held_pairs)
    write_text(beir / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n"
               + "".join(f"{q}\t{d}\t1\n" for q, d in qrels))
    training = out_dir / "train-pairs.jsonl"
    write_text(training, "".join(json.dumps(_pair_row(p)) + "\n" for p in rest))
    return str(training), str(beir)


def _pair_row(pair: Pair) -> dict:
    row = {"query": pair.query, "positive": pair.positive}
    if pair.negatives:
        row["negative"] = pair.negatives
    for key in ("lang", "query_lang", "positive_lang"):
        if getattr(pair, key) is not None:
            row[key] = getattr(pair, key)
    return row


def finetune_config(model: str, train: str, output: str, eval_dir: str | None = None, *, epochs: int = 1,
                    batch_size: int = 32, lr: float = 2e-5, max_examples: int | None = None,
                    max_length: int = 256, query_max_length: int = 64, temperature: float = 0.05,
                    false_negative_margin: float | None = 0.1, duplicate_threshold: float | None = 0.98,
                    quantizations: list[str] | None = None,
                    mrl_dims: list[int] | None = None, micro_batch: int | None = None,
                    eval_every: int | None = None, patience: int | None = 3, eval_max_queries: int | None = None,
                    eval_max_corpus: int | None = None, eval_views: list[str] | None = None, eval_before: bool = True,
                    warmup_steps: int = 0, seed: int = 0,
                    device: str | None = None, max_steps: int | None = None, log_every: int = 10,
                    bf16: bool = False, hard_negatives: int = 0) -> StageConfig:
    """The :class:`StageConfig` of a fine-tuning run (a ``pairs`` stage with one phase, or ``triplets``
    with ``hard_negatives`` negatives per pair mined by the starting model)."""
    if hard_negatives < 0:
        raise InputError(f"--hard-negatives must be 0 or more, not {hard_negatives}")
    evaluation = None
    if eval_dir is not None:
        evaluation = {"data": eval_dir, "every_steps": eval_every, "patience": patience,
                      "max_queries": eval_max_queries, "max_corpus": eval_max_corpus, "seed": seed,
                      "views": eval_views or ["float"], "before": eval_before}
    mining = {"num_negatives": hard_negatives} if hard_negatives else None
    return stage_config(
        stage="triplets" if hard_negatives else "pairs", mining=mining, model=model, output=output,
        batch_size=batch_size, micro_batch=micro_batch,
        max_length=max_length, query_max_length=query_max_length, seed=seed, device=device, max_steps=max_steps,
        log_every=log_every, bf16=bf16,
        phases=[{"data": train, "name": "domain", "epochs": epochs, "max_examples": max_examples}],
        loss={"temperature": temperature, "false_negative_margin": false_negative_margin,
              "duplicate_threshold": duplicate_threshold,
              "quantizations": quantizations or ["float"], "mrl_dims": mrl_dims},
        optim={"lr": lr, "warmup_steps": warmup_steps}, eval=evaluation)


def finetune(model: str, train: str, output: str, eval_dir: str | None = None, resume: bool = False,
             progress: bool = True, holdout: int = 0, **options) -> dict:
    """Fine-tune ``model`` on pairs JSONL ``train``; returns the summary (before/best metrics, output dir).

    ``holdout``: evaluate (and stop early) on that many held-out training pairs instead of ``eval_dir``.
    """
    if holdout:
        if eval_dir is not None:
            raise InputError("choose --eval or --holdout as the early-stopping set, not both; score other sets "
                             "afterwards with `pplx-embed eval`")
        train, eval_dir = split_holdout(train, holdout, output, options.get("seed", 0))
    return train_stage(finetune_config(model, train, output, eval_dir, **options), resume=resume, progress=progress)
