"""Contextual training of all-MiniLM-L6-v2 and late-chunked retrieval on covidqa-ctx (docs/training.md, result (d)).

Training data is NOT covidqa-ctx (the evaluation set): it is built from XQuAD English — each
Wikipedia article (``xquad/articles.tsv``: 48 articles × 5 paragraphs, ``p<article>_<paragraph>``)
is a document whose paragraphs are its ordered chunks, and each question points at its paragraph.
Articles (~800 MiniLM tokens) are longer than the window, so each article is cut greedily into
documents of consecutive paragraphs that fit ``--max-length`` tokens (what a late-chunking window
holds); written as contextual JSONL ``{"chunks": [...], "queries": [{"query", "chunk"}]}``.

Model: the bundled all-MiniLM-L6-v2 with its window raised from 256 to ``--max-length`` (512, the
limit of its position embeddings) so that late chunking sees neighbouring chunks; "before" is this
same 512-token model, untrained. Stage: ``pplx-embed train contextual`` (late chunking, dual loss:
in-batch chunk + in-sequence chunk + document-level InfoNCE).

Evaluation: ``pplx_embed.eval.tasks.contextual`` (what ``pplx-embed eval --contextual`` runs) on
covidqa-ctx — chunks embedded alone (``independent``) and late-chunked (``late``), float32, texts
right-truncated — on ``--docs`` seeded random whole documents (0 = all 98) and every query whose
relevant chunk lies in them.

    .venv/bin/python bench/train_contextual_covidqa.py            # resumes finished stages
    .venv/bin/python bench/train_contextual_covidqa.py --fresh

Writes docs/benchmarks/train_contextual_covidqa.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from pplx_embed.engine.threads import cpu_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_args, start_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
log = logging.getLogger("train_contextual_covidqa")


def xquad_contextual(out: Path, tokenizer, max_length: int) -> dict:
    """XQuAD-en articles as contextual JSONL documents that fit ``max_length`` tokens; returns counts."""
    from pplx_embed.eval.datasets import load_beir

    ds = load_beir(DATA / "xquad" / "en")
    articles: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for cid, text in zip(ds.corpus_ids, ds.corpus_texts):
        article, paragraph = map(int, cid[1:].split("_"))
        articles[article].append((paragraph, cid, text))
    queries: dict[str, list[str]] = defaultdict(list)
    for qid, text in zip(ds.query_ids, ds.query_texts):
        for cid, grade in ds.qrels[qid].items():
            if grade > 0:
                queries[cid].append(text)
    budget = max_length - 2  # [CLS] ... [SEP]
    docs = 0
    with out.open("w", encoding="utf-8") as f:
        for article in sorted(articles):
            paragraphs = sorted(articles[article])
            groups, current, used = [], [], 0
            for _, cid, text in paragraphs:
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + (1 if current else 0)
                if current and used + n > budget:
                    groups.append(current)
                    current, used = [], 0
                    n -= 1
                current.append((cid, text))
                used += n
            groups.append(current)
            for group in groups:
                qs = [{"query": q, "chunk": k} for k, (cid, _) in enumerate(group) for q in queries[cid]]
                if qs:
                    f.write(json.dumps({"chunks": [t for _, t in group], "queries": qs}) + "\n")
                    docs += 1
    return {"articles": len(articles), "documents": docs, "paragraphs": len(ds.corpus_ids),
            "queries": len(ds.query_ids)}


def widened_minilm(out: Path, max_length: int) -> Path:
    """A copy of the bundled MiniLM whose window (``sentence_bert_config.json``) is ``max_length`` tokens."""
    from pplx_embed.model.checkpoint import minilm_path

    if not (out / "config.json").is_file():
        shutil.copytree(minilm_path(), out, ignore=shutil.ignore_patterns("README.md", "data_config.json", ".git*"),
                        dirs_exist_ok=True)
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                   "do_lower_case": False}))
    return out


def covidqa_subset(n_docs: int, seed: int):
    """covidqa-ctx restricted to ``n_docs`` random whole documents and the queries answered in them."""
    from pplx_embed.eval.datasets import RetrievalSet, load_beir

    ds = load_beir(DATA / "covidqa-ctx")
    if not n_docs or n_docs >= len(ds.documents):
        return ds
    chosen = sorted(random.Random(seed).sample(range(len(ds.documents)), n_docs))
    rows = [r for d in chosen for r in ds.documents[d][1]]
    new_index = {r: i for i, r in enumerate(rows)}
    documents = [(ds.documents[d][0], [new_index[r] for r in ds.documents[d][1]]) for d in chosen]
    kept = {ds.corpus_ids[r] for r in rows}
    qrels = {q: {c: g for c, g in j.items() if c in kept} for q, j in ds.qrels.items()}
    qrels = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
    keep = [i for i, q in enumerate(ds.query_ids) if q in qrels]
    return RetrievalSet(ds.name, [ds.corpus_ids[r] for r in rows], [ds.corpus_texts[r] for r in rows],
                        [ds.query_ids[i] for i in keep], [ds.query_texts[i] for i in keep], qrels, documents)


def evaluate(model_dir: Path | str, ds) -> dict:
    """nDCG@10 etc. of chunks embedded alone vs late-chunked (float32, full dimension)."""
    from pplx_embed import Embedder
    from pplx_embed.eval.cache import EmbeddingCache
    from pplx_embed.eval.tasks import Settings, contextual

    t0 = time.time()
    embedder = Embedder(str(model_dir), dtype="float32")
    rows = contextual(embedder, ds, Settings(precisions=("float",), truncation="right", cache=EmbeddingCache(None)))
    out = {r["mode"]: {k: round(v, 4) for k, v in r["metrics"].items()} for r in rows}
    out["over_limit"] = rows[0]["over_limit"]
    out["seconds"] = round(time.time() - t0, 1)
    log.info("%s: nDCG@10 independent %.4f, late %.4f (%.0fs)", model_dir, out["independent"]["ndcg@10"],
             out["late"]["ndcg@10"], out["seconds"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=512, help="MiniLM window for training and evaluation")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8, help="queries per step (their documents are embedded whole)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--docs", type=int, default=25, help="covidqa-ctx documents evaluated (seeded sample; 0 = all 98)")
    add_run_args(ap, "/tmp/pplx-train-bench/contextual", ROOT / "docs" / "benchmarks" / "train_contextual_covidqa.json")
    args = ap.parse_args()
    work = start_run(args)
    started = time.time()

    from pplx_embed.train.config import stage_config
    from pplx_embed.train.contrastive import train_stage

    base = widened_minilm(work / f"minilm-{args.max_length}", args.max_length)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    train_file = work / "xquad-en-contextual.jsonl"
    train_data = xquad_contextual(train_file, tokenizer, args.max_length)
    log.info("training data: %s", train_data)
    ds = covidqa_subset(args.docs, args.seed)
    log.info("eval: covidqa-ctx, %d documents, %d chunks, %d queries", len(ds.documents), len(ds.corpus_ids),
             len(ds.query_ids))

    cached = work / "before.json"
    if not cached.is_file():
        cached.write_text(json.dumps(evaluate(base, ds)))
    before = json.loads(cached.read_text())

    out = work / "trained"
    if not (work / "train.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        summary = train_stage(stage_config(
            stage="contextual", model=str(base), output=str(out), batch_size=args.batch_size,
            max_length=args.max_length,
            query_max_length=64, seed=args.seed, log_every=1, max_steps=args.steps,
            loss={"temperature": 0.05, "contextual_weights": [1.0, 1.0, 1.0]},
            optim={"lr": args.lr, "warmup_steps": 5}, phases=[{"data": str(train_file), "name": "xquad-en"}]))
        losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
        (work / "train.json").write_text(json.dumps({"steps": summary["steps"],
                                                     "loss_curve": [round(x, 4) for x in losses],
                                                     "seconds": round(time.time() - t0, 1)}))
    train = json.loads((work / "train.json").read_text())
    cached = work / "after.json"
    if not cached.is_file():
        cached.write_text(json.dumps(evaluate(out / "last", ds)))
    after = json.loads(cached.read_text())

    curve = train["loss_curve"]
    print(f"{'model':<34}{'independent':>12}{'late':>8}")
    for name, r in (("MiniLM, 512-token window (before)", before), ("after contextual training", after)):
        print(f"{name:<34}{r['independent']['ndcg@10']:>12.4f}{r['late']['ndcg@10']:>8.4f}")
    record = {
        "benchmark": "train_contextual_covidqa", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"{cpu_description()} (CPU only, torch.set_num_threads({args.threads}); "
                  "2-core machine shared with other jobs)",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "model": "sentence-transformers/all-MiniLM-L6-v2 (bundled), window raised to "
                 f"{args.max_length} tokens (sentence_bert_config max_seq_length)",
        "settings": {k: v for k, v in vars(args).items() if k not in ("fresh", "out", "work")},
        "training": {"data": "xquad/en as contextual documents (articles cut into windows of consecutive paragraphs)",
                     **train_data, "examples_seen": train["steps"] * args.batch_size, "stage": "contextual",
                     "loss": "in-batch chunk + in-sequence chunk + document InfoNCE, weights 1/1/1, temperature 0.05",
                     "steps": train["steps"], "loss_curve": curve,
                     "loss_first10": round(sum(curve[:10]) / len(curve[:10]), 4),
                     "loss_last10": round(sum(curve[-10:]) / len(curve[-10:]), 4)},
        "eval": {"set": "covidqa-ctx", "documents": len(ds.documents), "chunks": len(ds.corpus_ids),
                 "queries": len(ds.query_ids), "seed": args.seed, "precision": "float32, full dimension",
                 "truncation": "right", "code": "pplx_embed.eval.tasks.contextual (pplx-embed eval --contextual)"},
        "before": before, "after": after,
        "seconds": {"train": train["seconds"], "eval_before": before["seconds"], "eval_after": after["seconds"],
                    "total_this_invocation": round(time.time() - started, 1)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
