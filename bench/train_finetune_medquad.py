"""Domain fine-tuning of MiniLM on MedQuAD pairs: base vs plain fine-tuning vs QAT+MRL fine-tuning.

Measures (docs/training.md, results (a) and (b)):
  (a) nDCG@10 on medquad/dev before and after fine-tuning on a subset of medquad/train.jsonl;
  (b) retention of int8, binary and 128/256-dim outputs (relative to float full-dim) after plain
      fine-tuning vs fine-tuning with QAT (float+int8+binary views) and MRL (128, 256, full).
Eval: all dev queries (or --queries) against a corpus of all their relevant answers plus random
other answers up to --corpus rows (seeded). Writes docs/benchmarks/train_medquad.json.

    .venv/bin/python bench/train_finetune_medquad.py --pairs 2048 --corpus 3000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from pplx_embed.train.finetune import finetune

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medquad"
VIEWS = ["int8", "binary", "float@128", "float@256", "int8@256", "binary@256"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--corpus", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--runs", default="plain,qat_mrl")
    ap.add_argument("--work", default="/tmp/pplx-train-bench/medquad")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "train_medquad.json"))
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (DATA / "train.jsonl").open(encoding="utf-8")]
    rows = random.Random(0).sample(rows, args.pairs)
    train = work / "pairs.jsonl"
    with train.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"query": r["query"], "positive": r["positive"]}) + "\n")

    common = dict(epochs=1, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, warmup_steps=6,
                  eval_max_queries=args.queries, eval_max_corpus=args.corpus, eval_views=VIEWS, patience=None,
                  seed=0, device="cpu", log_every=5)
    variants = {"plain": {}, "qat_mrl": {"quantizations": ["float", "int8", "binary"], "mrl_dims": [128, 256]}}
    results: dict = {}
    for name in args.runs.split(","):
        started = time.time()
        summary = finetune("minilm", str(train), str(work / name), str(DATA / "dev"), progress=False,
                           **common, **variants[name])
        results[name] = {"before": summary["before"], "after": summary["history"][-1], "best": summary["best"],
                         "steps": summary["steps"], "seconds": round(time.time() - started, 1),
                         "options": variants[name]}
        print(f"{name}: nDCG@10 {summary['before']['ndcg@10']:.4f} -> {summary['history'][-1]['ndcg@10']:.4f} "
              f"({summary['steps']} steps, {time.time() - started:.0f}s)", flush=True)

    def retention(views: dict) -> dict:
        full = views["float@full"]["ndcg@10"]
        return {k: round(v["ndcg@10"] / full, 4) for k, v in views.items()}

    base = next(iter(results.values()))["before"]["views"]
    table = {"base": {k: round(v["ndcg@10"], 4) for k, v in base.items()}}
    for name, r in results.items():
        table[name] = {k: round(v["ndcg@10"], 4) for k, v in r["after"]["views"].items()}
    print(f"{'view':<12}" + "".join(f"{n:>12}" for n in table))
    for view in table["base"]:
        print(f"{view:<12}" + "".join(f"{table[n][view]:>12.4f}" for n in table))
    print("retention (nDCG@10 / float@full):")
    for n in table:
        views = base if n == "base" else results[n]["after"]["views"]
        print(f"  {n}: {retention(views)}")
    record = {
        "benchmark": "train_finetune_medquad", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, shared)",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__},
        "model": "sentence-transformers/all-MiniLM-L6-v2", "train_pairs": args.pairs, "batch_size": args.batch_size,
        "max_length": args.max_length, "lr": args.lr, "eval": {"set": "medquad/dev", "queries": args.queries or "all",
                                                                 "corpus": args.corpus, "seed": 0},
        "ndcg@10": table, "retention": {n: retention(base if n == "base" else results[n]["after"]["views"]) for n in table},
        "runs": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
