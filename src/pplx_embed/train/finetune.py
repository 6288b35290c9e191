"""Domain fine-tuning: query/positive pairs → a better checkpoint for your own data.

``pplx-embed finetune --model M --train pairs.jsonl -o OUT`` runs the measured default recipe
(docs/training.md, "Fine-tuning that generalizes"):

1. hold out a slice of the pairs (``holdout``, default 10% up to 1,000) to evaluate on and keep the
   best checkpoint by, never the dev set you report;
2. mine one hard negative per pair with the starting model (``hard_negatives``);
3. in-batch InfoNCE with false-negative masking, bf16 autocast where the device computes it
   natively, one epoch at lr 5e-5 with 5% warm-up;
4. SLERP the best checkpoint back toward the starting model (``merge_start``: the weight T kept of the
   fine-tune): the fine-tune alone learns the training set's phrasing and forgets general skills,
   the merge keeps most of the in-domain gain and loses less. ``"auto"`` (the default) picks T on the
   ``checks``: the largest T of ``MERGE_GRID`` whose every check loses at most ``FORGET_LIMIT`` points
   (without checks: ``MERGE_START``);
5. score ``checks`` (general sets: forgetting) before and after, and print one summary line.

Optional: ``replay`` mixes general pairs into training, ``lora`` trains a LoRA adapter instead of
the weights (written as a few-MB adapter: ``Embedder(base, adapter=OUT/best)``).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from pplx_embed.atomic import write_text
from pplx_embed.errors import InputError
from pplx_embed.train.config import FORGET_LIMIT, MERGE_GRID, MERGE_START, StageConfig, stage_config
from pplx_embed.train.contrastive import train_stage
from pplx_embed.train.data import load_pairs, write_pairs

log = logging.getLogger(__name__)
LR, LORA_LR = 5e-5, 5e-4
HOLDOUT_SHARE, HOLDOUT_MAX = 0.1, 1000
WARMUP_SHARE = 0.05


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
    write_pairs(training, rest)
    return str(training), str(beir)


def finetune_config(model: str, train: str, output: str, eval_dir: str | None = None, *, epochs: int = 1,
                    batch_size: int = 32, lr: float | None = None, max_examples: int | None = None,
                    max_length: int = 256, query_max_length: int = 64, temperature: float = 0.05,
                    false_negative_margin: float | None = 0.1, duplicate_threshold: float | None = 0.98,
                    quantizations: list[str] | None = None,
                    mrl_dims: list[int] | None = None, micro_batch: int | None = None,
                    eval_every: int | None = None, patience: int | None = 3, eval_max_queries: int | None = None,
                    eval_max_corpus: int | None = None, eval_views: list[str] | None = None, eval_before: bool = True,
                    warmup_steps: int | None = None, seed: int = 0,
                    device: str | None = None, max_steps: int | None = None, log_every: int = 10,
                    bf16: bool | None = None, hard_negatives: int = 1, lora: int | None = None) -> StageConfig:
    """The :class:`StageConfig` of a fine-tuning run (a ``pairs`` stage with one phase, or ``triplets``
    with ``hard_negatives`` negatives per pair mined by the starting model).

    ``None`` means the default recipe: lr 5e-5 (5e-4 for LoRA), 5% of the steps warm-up, bf16 where native.
    """
    if hard_negatives < 0:
        raise InputError(f"--hard-negatives must be 0 or more, not {hard_negatives}")
    if warmup_steps is None:
        steps = _count_pairs(train, max_examples) // max(batch_size, 1) * epochs
        warmup_steps = max(1, round(WARMUP_SHARE * (min(steps, max_steps) if max_steps else steps)))
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
        log_every=log_every, bf16=native_bf16_here(device) if bf16 is None else bf16, lora=lora,
        phases=[{"data": train, "name": "domain", "epochs": epochs, "max_examples": max_examples}],
        loss={"temperature": temperature, "false_negative_margin": false_negative_margin,
              "duplicate_threshold": duplicate_threshold,
              "quantizations": quantizations or ["float"], "mrl_dims": mrl_dims},
        optim={"lr": lr if lr is not None else LORA_LR if lora else LR, "warmup_steps": warmup_steps},
        eval=evaluation)


def native_bf16_here(device: str | None) -> bool:
    """bf16 autocast is the default where it is fast: CUDA, or a CPU with AMX / avx512_bf16 (elsewhere emulated)."""
    import torch

    from pplx_embed.engine.backends import native_bf16
    from pplx_embed.engine.threads import cpu_flags

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return True
    return native_bf16(cpu_flags())


def _count_pairs(path: str, cap: int | None) -> int:
    try:
        with open(path, "rb") as f:
            count = sum(1 for line in f if line.strip())
    except OSError:
        return 0  # reported when the stage reads it
    return min(count, cap) if cap else count


def add_replay(train: str, replay: str, fraction: float, out_dir: Path, seed: int) -> str:
    """The training pairs plus ``fraction`` × as many general pairs drawn from ``replay``, as one file to shuffle."""
    if not 0 < fraction <= 1:
        raise InputError(f"--replay-fraction must be in (0, 1], not {fraction}")
    pairs, general = load_pairs(train), load_pairs(replay)
    count = min(len(general), max(1, round(fraction * len(pairs))))
    mixed = pairs + random.Random(seed).sample(general, count)
    log.info("replay: %d general pairs from %s mixed into %d training pairs", count, replay, len(pairs))
    return str(write_pairs(out_dir / "train-pairs.jsonl", mixed))


def finetune(model: str, train: str, output: str, eval_dir: str | None = None, resume: bool = False,
             progress: bool = True, holdout: int | None = None, *, merge_start: float | str | None = "auto",
             checks: list[str] | None = None, replay: str | None = None, replay_fraction: float = 0.25,
             **options) -> dict:
    """Fine-tune ``model`` on pairs JSONL ``train``; returns the summary (before/best/merged metrics, output dir).

    ``holdout``: evaluate (keep the best checkpoint, stop early) on that many held-out training pairs
    (default: 10% up to 1,000 when no ``eval_dir`` is given; 0: none). ``merge_start``: write
    ``slerp(start, best, t)`` to ``OUT/merged`` (``"auto"``: see :func:`merge_toward_start`; ``None`` or 1: no
    merge). ``checks``: general sets scored before and after (see :mod:`pplx_embed.train.checks`). ``replay``:
    pairs JSONL of general pairs, ``replay_fraction`` × the training pairs of them mixed in. Other options:
    :func:`finetune_config`.
    """
    from pplx_embed.train.checks import validate_checks

    checks, merge_start = validate_checks(checks), merge_weight(merge_start)
    out = Path(output)
    if holdout is None:
        size = min(HOLDOUT_MAX, max(1, round(HOLDOUT_SHARE * _count_pairs(train, None))))
        holdout = 0 if eval_dir is not None else size
    if holdout:
        if eval_dir is not None:
            raise InputError("choose --eval or --holdout as the early-stopping set, not both; score other sets "
                             "afterwards with `pplx-embed eval` (or --check)")
        train, eval_dir = split_holdout(train, holdout, output, options.get("seed", 0))
    if replay:
        train = add_replay(train, replay, replay_fraction, out, options.get("seed", 0))
    config = finetune_config(model, train, output, eval_dir, **options)
    summary = train_stage(config, resume=resume, progress=progress)
    best = summary["output"]
    if merge_start is not None and config.lora:
        log.info("merge: skipped for a LoRA adapter (it is kept separate from the base weights)")
    elif merge_start is not None:
        merged = merge_toward_start(model, best, out / "merged", merge_start, checks, progress)
        if "checks" in merged:
            summary["checks"] = merged.pop("checks")
        if config.eval is not None:
            merged["eval"] = _evaluate(merged["output"], config, progress)
        summary["merged"], summary["output"] = merged, merged["output"]
    if checks and "checks" not in summary:
        summary["checks"] = _run_checks(model, summary, config, checks, progress)
    if config.lora:
        summary["adapter_of"] = model
    summary["line"] = summary_line(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def merge_weight(value: float | str | None) -> float | str | None:
    """``--merge-start`` as :func:`finetune` uses it: ``"auto"``, a weight in [0, 1), or None (1: no merge)."""
    if value is None or value == "auto":
        return value
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0 <= t <= 1:
        raise InputError(f"--merge-start must be auto or between 0 (the start model) and 1 (no merge), "
                         f"not {str(value)[:40]!r}")
    return None if t == 1 else t


def merge_toward_start(model: str, best: str | Path, output: str | Path, t: float | str,
                       checks: list[str] | None = None, progress: bool = True) -> dict:
    """``slerp(model, best, T)`` → ``output``; returns ``{"t", "output"}``, with ``checks`` also their scores
    ``{"checks": {name: {"before", "after"}}}``.

    ``t="auto"`` with checks: T is the largest of ``MERGE_GRID`` whose every check loses at most
    ``FORGET_LIMIT`` points against the start (tried largest first; none: the smallest), and ``"tried"`` holds
    each tried T's scores; without checks, ``MERGE_START``.
    """
    from pplx_embed.train.checks import check_embedder, run_checks
    from pplx_embed.train.merge import merge_checkpoints

    grid = (t,) if t != "auto" else MERGE_GRID if checks else (MERGE_START,)
    before = run_checks(check_embedder(model), checks, progress) if checks else {}
    tried = {}
    for weight in grid:
        log.info("merge: slerp(start, %s, t=%s) -> %s", best, weight, output)
        merge_checkpoints(model, best, output, weight, overwrite=True, progress=progress)
        if not checks:
            break
        after = tried[weight] = run_checks(check_embedder(str(output)), checks, progress)
        loss = max(before[name] - after[name] for name in before)
        if len(grid) == 1 or loss <= FORGET_LIMIT + 1e-9:
            break
        if weight != grid[-1]:
            log.info("merge: t=%s loses %.2f points on a check (at most %s kept); trying a smaller t", weight, loss,
                     FORGET_LIMIT)
        else:
            log.warning("merge: every t loses more than %s points on a check; kept the smallest, t=%s",
                        FORGET_LIMIT, weight)
    out = {"t": weight, "output": str(output)}
    if checks:
        out["checks"] = {name: {"before": before[name], "after": after[name]} for name in before}
    if len(grid) > 1:
        out["tried"] = {str(w): scores for w, scores in tried.items()}
    return out


def _evaluate(model: str, config: StageConfig, progress: bool) -> dict:
    """The held-out metrics of a written checkpoint, scored as training scored its checkpoints."""
    from pplx_embed import Embedder
    from pplx_embed.train.evaluation import load_eval_set, retrieval_scores

    e = config.eval
    data = load_eval_set(e.data, e.max_queries, e.max_corpus, e.seed)
    embedder = Embedder(model, backend="torch", dtype="float32", device=config.device)
    return retrieval_scores(embedder, data, progress=progress)["float@full"]


def _run_checks(model: str, summary: dict, config: StageConfig, checks: list[str], progress: bool) -> dict:
    from pplx_embed.train.checks import check_embedder, run_checks

    log.info("checks: scoring %s on the start model and the result", ", ".join(checks))
    final = summary["output"]
    before = run_checks(check_embedder(model), checks, progress)
    after = run_checks(check_embedder(model, final) if config.lora else check_embedder(final), checks, progress)
    return {name: {"before": before[name], "after": after[name]} for name in before}


def summary_line(summary: dict) -> str:
    """One line: in-domain before → after (→ merged), each check before → after, where the model is."""
    parts = []
    metric = summary.get("metric")
    if metric and summary.get("before") is not None:
        text = f"held-out {metric} {100 * summary['before'][metric]:.1f} → {100 * summary['best']:.1f} (best)"
        if "eval" in summary.get("merged", {}):
            how = " chosen on the checks" if "tried" in summary["merged"] else ""
            text += f" → {100 * summary['merged']['eval'][metric]:.1f} (merged, t={summary['merged']['t']}{how})"
        parts.append(text)
    for name, s in summary.get("checks", {}).items():
        parts.append(f"{name} {s['before']:.1f} → {s['after']:.1f} ({s['after'] - s['before']:+.1f})")
    if not summary.get("checks"):
        parts.append("no forgetting checks (add --check SET)")
    where = f"LoRA adapter over {summary['adapter_of']}: {summary['output']}" if "adapter_of" in summary \
        else f"model: {summary['output']}"
    return "finetune: " + "; ".join(parts) + f"; {where}"
