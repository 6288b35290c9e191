"""Domain fine-tuning: query/positive pairs → a better checkpoint for your own data.

The pair stage with the defaults that suit 10k–50k in-domain pairs: in-batch InfoNCE with
false-negative masking (plus QAT / MRL views on request), evaluation before training and after
each epoch (or every N steps) on a BEIR directory, early stopping, and the best checkpoint kept.
Works for any checkpoint ``Embedder`` loads (MiniLM, pplx-embed).
"""

from __future__ import annotations

from pplx_embed.train.config import StageConfig, stage_config
from pplx_embed.train.contrastive import train_stage


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
                    bf16: bool = False) -> StageConfig:
    """The :class:`StageConfig` of a fine-tuning run (a ``pairs`` stage with one phase)."""
    evaluation = None
    if eval_dir is not None:
        evaluation = {"data": eval_dir, "every_steps": eval_every, "patience": patience,
                      "max_queries": eval_max_queries, "max_corpus": eval_max_corpus, "seed": seed,
                      "views": eval_views or ["float"], "before": eval_before}
    return stage_config(
        stage="pairs", model=model, output=output, batch_size=batch_size, micro_batch=micro_batch,
        max_length=max_length, query_max_length=query_max_length, seed=seed, device=device, max_steps=max_steps,
        log_every=log_every, bf16=bf16,
        phases=[{"data": train, "name": "domain", "epochs": epochs, "max_examples": max_examples}],
        loss={"temperature": temperature, "false_negative_margin": false_negative_margin,
              "duplicate_threshold": duplicate_threshold,
              "quantizations": quantizations or ["float"], "mrl_dims": mrl_dims},
        optim={"lr": lr, "warmup_steps": warmup_steps}, eval=evaluation)


def finetune(model: str, train: str, output: str, eval_dir: str | None = None, resume: bool = False,
             progress: bool = True, **options) -> dict:
    """Fine-tune ``model`` on pairs JSONL ``train``; returns the summary (before/best metrics, output dir)."""
    return train_stage(finetune_config(model, train, output, eval_dir, **options), resume=resume, progress=progress)
