"""Domain fine-tuning of MiniLM on MedQuAD pairs: base vs plain fine-tuning vs QAT+MRL fine-tuning.

Measures (docs/training.md, results (a) and (b)):
  (a) nDCG@10 on medquad/dev before and after fine-tuning on a subset of medquad/train.jsonl;
  (b) retention of int8, binary and 128/256-dim outputs (relative to float full-dim) after plain
      fine-tuning vs fine-tuning with QAT (float+int8+binary views) and MRL (128, 256, full).
Eval: --queries random dev queries against a corpus of all their relevant answers plus random
other answers up to --corpus rows (seeded). Writes docs/benchmarks/train_medquad.json.

    .venv/bin/python bench/train_finetune_medquad.py --run plain &    # base + plain fine-tuning
    .venv/bin/python bench/train_finetune_medquad.py --run qat_mrl &  # QAT + MRL fine-tuning
    wait; .venv/bin/python bench/train_finetune_medquad.py --run combine
    .venv/bin/python bench/train_finetune_medquad.py --run rescore --queries 0 --corpus 2000 --threads 2
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


def retention(views: dict) -> dict:
    full = views["float@full"]["ndcg@10"]
    return {k: round(v["ndcg@10"] / full, 4) for k, v in views.items()}


def combine(work: Path, out: Path, args: argparse.Namespace) -> None:
    """Print and write the comparison once every run has finished."""
    results = {n: json.loads((work / f"{n}.json").read_text()) for n in VARIANTS if (work / f"{n}.json").is_file()}
    if "plain" not in results:
        return
    base = results["plain"]["before"]["views"]
    table = {"base": base, **{n: r["after"]["views"] for n, r in results.items()}}
    print(f"{'nDCG@10':<12}" + "".join(f"{n:>12}" for n in table))
    for view in base:
        print(f"{view:<12}" + "".join(f"{table[n][view]['ndcg@10']:>12.4f}" for n in table))
    print("retention (nDCG@10 relative to float@full of the same model):")
    for n, views in table.items():
        print(f"  {n:<8} " + "  ".join(f"{k} {v:.3f}" for k, v in retention(views).items() if k != "float@full"))
    record = {
        "benchmark": "train_finetune_medquad", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.machine()}), torch.set_num_threads({args.threads}) per run, runs concurrent, "
                  "2-core machine shared with other jobs",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "model": "sentence-transformers/all-MiniLM-L6-v2", "train_pairs": args.pairs, "batch_size": args.batch_size,
        "max_length": args.max_length, "lr": args.lr, "epochs": 1,
        "eval": {"set": "medquad/dev", "queries": args.queries, "corpus": args.corpus, "seed": 0,
                 "note": "random queries (seeded); corpus = all their relevant answers + random other answers"},
        "ndcg@10": {n: {k: round(v["ndcg@10"], 4) for k, v in views.items()} for n, views in table.items()},
        "retention": {n: retention(views) for n, views in table.items()},
        "runs": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


def rescore(work: Path, args: argparse.Namespace) -> None:
    """Score the base model and the fine-tuned checkpoints (``<work>/<run>/last``) on another eval subset."""
    from pplx_embed import Embedder
    from pplx_embed.train.evaluation import load_eval_set, parse_view, retrieval_scores

    data = load_eval_set(str(DATA / "dev"), args.queries or None, args.corpus, seed=0)
    views = [("float", None)] + [parse_view(v) for v in VIEWS]
    table = {}
    for name, model in [("base", "minilm")] + [(n, str(work / n / "last")) for n in VARIANTS]:
        started = time.time()
        table[name] = retrieval_scores(Embedder(model), data, views)
        print(f"{name}: nDCG@10 {table[name]['float@full']['ndcg@10']:.4f} ({time.time() - started:.0f}s)", flush=True)
    record = {"benchmark": "train_finetune_medquad (rescore)",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} thread(s), 2-core machine shared)",
              "eval": {"set": "medquad/dev", "queries": len(data.query_ids), "corpus": len(data.corpus_ids), "seed": 0},
              "ndcg@10": {n: {k: round(v["ndcg@10"], 4) for k, v in t.items()} for n, t in table.items()},
              "retention": {n: retention(t) for n, t in table.items()}, "metrics": table}
    out = Path(args.out).with_name(Path(args.out).stem + "_rescore.json")
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record["ndcg@10"], indent=1))
    print(f"wrote {out}")


VARIANTS = {"plain": {}, "qat_mrl": {"quantizations": ["float", "int8", "binary"], "mrl_dims": [128, 256]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", choices=[*VARIANTS, "combine", "rescore"], default="plain")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--corpus", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/pplx-train-bench/medquad")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "train_medquad.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.run == "combine":
        combine(work, Path(args.out), args)
        return 0
    if args.run == "rescore":
        rescore(work, args)
        return 0
    rows = [json.loads(line) for line in (DATA / "train.jsonl").open(encoding="utf-8")]
    rows = random.Random(0).sample(rows, args.pairs)
    train = work / f"pairs-{args.run}.jsonl"
    with train.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"query": r["query"], "positive": r["positive"]}) + "\n")
    started = time.time()
    summary = finetune("minilm", str(train), str(work / args.run), str(DATA / "dev"), progress=False,
                       epochs=1, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                       warmup_steps=3, eval_max_queries=args.queries, eval_max_corpus=args.corpus, eval_views=VIEWS,
                       eval_before=args.run == "plain", patience=None, seed=0, log_every=2, hard_negatives=0,
                       merge_start=None, **VARIANTS[args.run])
    result = {"before": summary["before"], "after": summary["history"][-1], "steps": summary["steps"],
              "seconds": round(time.time() - started, 1), "options": VARIANTS[args.run]}
    (work / f"{args.run}.json").write_text(json.dumps(result, indent=2))
    before = f"{summary['before']['ndcg@10']:.4f} -> " if summary["before"] else ""
    print(f"{args.run}: nDCG@10 {before}{result['after']['ndcg@10']:.4f} "
          f"({summary['steps']} steps, {result['seconds']}s)")
    combine(work, Path(args.out), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
