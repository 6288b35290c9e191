"""Domain fine-tuning of MiniLM on all MedQuAD training pairs, scored on the full medquad/dev corpus.

The runs of docs/training.md "Results at full data scale" (issue 17, items 1, 2 and 4):

* ``ft``    — plain fine-tune: all 14,376 pairs of ``medquad/train.jsonl`` minus a held-out slice
  (``--holdout`` pairs; early stopping and the best checkpoint are decided on it, never on dev),
  one hard negative per pair mined with the base model (near-duplicates of the positive and
  candidates scored above it skipped), InfoNCE with the false-negative mask, one epoch, bf16 autocast
  on CPUs with native bf16;
* ``qat``   — the same run with the int8/binary straight-through views and Matryoshka 128/256 losses;
* ``merge`` — SLERP (t = 0.5) of the ``ft`` and ``qat`` best checkpoints of one seed;
* ``eval``  — base or a trained model on all 1,000 dev queries against all 15,809 dev answers, at
  float / int8 / binary / binary+rescore × 128 / 256 / 384 dims (``pplx_embed.eval``, what
  ``pplx-embed eval`` runs), texts right-truncated at the model's 256 tokens;
* ``report`` — the table and ``docs/benchmarks/train_medquad_full.json``.

Every step is resumable (finished steps are skipped; an interrupted training resumes from its
``last`` checkpoint). Two trainings can run side by side with ``--threads 1`` each:

    .venv/bin/python bench/train_medquad_full.py --run ft --seed 0 --threads 1 &
    .venv/bin/python bench/train_medquad_full.py --run qat --seed 0 --threads 1 &
    wait
    .venv/bin/python bench/train_medquad_full.py --run merge --seed 0
    .venv/bin/python bench/train_medquad_full.py --run eval --threads 2   # base and every finished model
    .venv/bin/python bench/train_medquad_full.py --run report
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_args, eval_engine, start_run  # noqa: E402
from pplx_embed.engine.backends import native_bf16  # noqa: E402
from pplx_embed.engine.threads import cpu_description, cpu_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medquad"
log = logging.getLogger("train_medquad_full")
VARIANTS = {"ft": {}, "qat": {"quantizations": ["float", "int8", "binary"], "mrl_dims": [128, 256]}}
PRECISIONS = ("float", "int8", "binary", "binary+rescore")
DIMS = (128, 256, None)


def train(work: Path, variant: str, args: argparse.Namespace) -> None:
    from pplx_embed.train.finetune import finetune

    name = f"{variant}-s{args.seed}"
    out = work / name
    if (out / "summary.json").is_file():
        log.info("%s: finished before, skipped", name)
        return
    started = time.time()
    summary = finetune(
        "minilm", str(DATA / "train.jsonl"), str(out), resume=(out / "last" / "trainer_state.pt").is_file(),
        progress=False, holdout=args.holdout, hard_negatives=1, bf16=args.bf16, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, max_length=args.max_length,
        eval_every=args.eval_every, patience=args.patience, seed=args.seed, log_every=5, merge_start=None,
        **VARIANTS[variant])
    summary.pop("history", None)
    summary["seconds_this_invocation"] = round(time.time() - started, 1)
    (work / f"{name}.train.json").write_text(json.dumps(summary, indent=2))
    log.info("%s: %d steps, held-out nDCG@10 %.4f -> best %.4f (%.0f s)", name, summary["steps"],
             summary["before"]["ndcg@10"] if summary["before"] else float("nan"), summary["best"],
             summary["seconds_this_invocation"])


def merge(work: Path, seed: int) -> None:
    from pplx_embed.train.merge import merge_checkpoints

    out = work / f"slerp-s{seed}"
    if not (out / "config.json").is_file():
        merge_checkpoints(str(work / f"ft-s{seed}" / "best"), str(work / f"qat-s{seed}" / "best"), str(out), 0.5)
    log.info("merged into %s", out)


def evaluate(work: Path, name: str, model: str) -> None:
    from pplx_embed import Embedder
    from pplx_embed.eval import runner, tasks

    out = work / f"eval-{name}.json"
    if out.is_file():
        return
    started = time.time()
    embedder = Embedder(model, **eval_engine())
    records = runner.run(embedder, DATA / "dev", tasks.Settings(precisions=PRECISIONS, dimensions=DIMS,
                                                                truncation="right"))
    table = {f"{r['precision']}@{r['dimensions']}": r["metrics"] for r in records}
    out.write_text(json.dumps({"model": model, "engine": embedder.engine_info.to_dict(),
                               "seconds": round(time.time() - started),
                               "queries": records[0]["queries"], "corpus": records[0]["corpus"],
                               "metrics": table}, indent=2))
    log.info("%s: nDCG@10 float@384 %.4f (%.0f s)", name, table["float@384"]["ndcg@10"], time.time() - started)


def models(work: Path) -> dict[str, str]:
    """Base and every finished model of the work folder, by name."""
    found = {"base": "minilm"}
    for path in sorted(work.glob("*-s*")):
        if path.is_dir() and (path / "summary.json").is_file():
            found[path.name] = str(path / "best")
        elif path.is_dir() and path.name.startswith("slerp") and (path / "config.json").is_file():
            found[path.name] = str(path)
    return found


def report(work: Path, args: argparse.Namespace) -> None:
    evals = {n: json.loads((work / f"eval-{n}.json").read_text()) for n in models(work)
             if (work / f"eval-{n}.json").is_file()}
    views = list(evals["base"]["metrics"])
    print(f"{'nDCG@10':<22}" + "".join(f"{n:>11}" for n in evals))
    for view in views:
        print(f"{view:<22}" + "".join(f"{e['metrics'][view]['ndcg@10'] * 100:>11.1f}" for e in evals.values()))
    print("retention (relative to the same model's float@384):")
    retention = {n: {v: round(e["metrics"][v]["ndcg@10"] / e["metrics"]["float@384"]["ndcg@10"], 4) for v in views}
                 for n, e in evals.items()}
    for n, r in retention.items():
        print(f"  {n:<10} " + "  ".join(f"{v} {x:.3f}" for v, x in r.items() if v != "float@384"))
    runs = {p.name[: -len(".train.json")]: json.loads(p.read_text()) for p in sorted(work.glob("*.train.json"))}
    for name, summary in runs.items():
        log_rows = [json.loads(line) for line in (work / name / "log.jsonl").read_text().splitlines()]
        summary["held_out"] = [{"step": r["step"], "ndcg@10": round(r["eval"]["ndcg@10"], 4)}
                               for r in log_rows if "eval" in r]
        steps = [r for r in log_rows if "elapsed_s" in r]
        summary["train_seconds"] = steps[-1]["elapsed_s"] if steps else None
        summary["config"] = json.loads((work / name / "config.json").read_text())
    record = {
        "benchmark": "train_medquad_full", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": cpu_description(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "model": "sentence-transformers/all-MiniLM-L6-v2 (bundled)",
        "eval": {"set": "medquad/dev (all queries, full corpus)", "truncation": "right",
                 "engine": evals["base"]["engine"]},
        "ndcg@10": {n: {v: round(m["ndcg@10"], 4) for v, m in e["metrics"].items()} for n, e in evals.items()},
        "retention": retention, "evals": evals, "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", choices=[*VARIANTS, "merge", "eval", "report"], required=True)
    ap.add_argument("--holdout", type=int, default=1000, help="training pairs held out for early stopping")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=128, help="document tokens in training (queries: 64)")
    ap.add_argument("--eval-every", type=int, default=100, help="held-out evaluation every N steps")
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    add_run_args(ap, "/tmp/pplx-train-bench/medquad-full", ROOT / "docs" / "benchmarks" / "train_medquad_full.json")
    args = ap.parse_args()
    args.bf16 = args.bf16 and native_bf16(cpu_flags())  # emulated bf16 is slower than fp32
    work = start_run(args)
    if args.run in VARIANTS:
        train(work, args.run, args)
    elif args.run == "merge":
        merge(work, args.seed)
    elif args.run == "eval":
        for name, model in models(work).items():
            evaluate(work, name, model)
    else:
        report(work, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
