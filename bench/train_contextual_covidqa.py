"""Contextual training of all-MiniLM-L6-v2 and late-chunked retrieval on covidqa-ctx (docs/training.md, result (d)).

Training data is NOT covidqa-ctx (the evaluation set): it is built from XQuAD English — each
Wikipedia article (``xquad/articles.tsv``: 48 articles × 5 paragraphs, ``p<article>_<paragraph>``)
is a document whose paragraphs are its ordered chunks, and each question points at its paragraph.
Articles (~800 MiniLM tokens) are longer than the window, so each article is cut greedily into
documents of consecutive paragraphs that fit ``--max-length`` tokens (what a late-chunking window
holds); written as contextual JSONL ``{"chunks": [...], "queries": [{"query", "chunk"}]}``.

Model: the bundled all-MiniLM-L6-v2 with its window raised from 256 to ``--max-length`` (512, the
limit of its position embeddings) so that late chunking sees neighbouring chunks; "before" is this
same 512-token model, untrained. Two arms per seed, the same queries in the same batches for the
same steps: ``contextual`` (``pplx-embed train contextual``: late chunking, dual loss: in-batch chunk +
in-sequence chunk + document-level InfoNCE) and ``pairs``, the control (``pplx-embed train pairs``:
each query with its chunk embedded alone, in-batch InfoNCE) — so what the contextual loss adds beyond
pair training on the same data shows as the difference between the arms.

Evaluation: ``pplx_embed.eval.tasks.contextual`` (what ``pplx-embed eval --contextual`` runs) on
covidqa-ctx — chunks embedded alone (``independent``) and late-chunked (``late``), full-dimension
float, texts right-truncated — on all 98 documents (``--docs N``: a seeded sample of N whole
documents), with torch bf16 on CPUs with native bf16 (else fp32) for every model alike.

    .venv/bin/python bench/train_contextual_covidqa.py            # resumes finished runs and evaluations
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
from common import add_run_args, eval_engine, start_run  # noqa: E402

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
    """nDCG@10 etc. of chunks embedded alone vs late-chunked (full dimension, float)."""
    from pplx_embed import Embedder
    from pplx_embed.eval.cache import EmbeddingCache
    from pplx_embed.eval.tasks import Settings, contextual

    t0 = time.time()
    embedder = Embedder(str(model_dir), **eval_engine())
    rows = contextual(embedder, ds, Settings(precisions=("float",), truncation="right", cache=EmbeddingCache(None)))
    out = {r["mode"]: {k: round(v, 4) for k, v in r["metrics"].items()} for r in rows}
    out["over_limit"] = rows[0]["over_limit"]
    out["engine"] = embedder.engine_info.to_dict()
    out["seconds"] = round(time.time() - t0, 1)
    log.info("%s: nDCG@10 independent %.4f, late %.4f (%.0fs)", model_dir, out["independent"]["ndcg@10"],
             out["late"]["ndcg@10"], out["seconds"])
    return out


def pairs_of(contextual_file: Path, out: Path) -> Path:
    """The pair-training control's data: the same queries, each with its chunk alone as the positive."""
    with out.open("w", encoding="utf-8") as f:
        for line in contextual_file.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            for q in doc["queries"]:
                f.write(json.dumps({"query": q["query"], "positive": doc["chunks"][q["chunk"]]}) + "\n")
    return out


def train_arm(work: Path, arm: str, seed: int, base: Path, data: Path, args: argparse.Namespace) -> dict:
    """One training run (cached in ``<arm>-s<seed>.train.json``): the contextual stage, or the pair control."""
    from pplx_embed.train.config import stage_config
    from pplx_embed.train.contrastive import train_stage

    done = work / f"{arm}-s{seed}.train.json"
    if done.is_file():
        return json.loads(done.read_text())
    out = work / f"{arm}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    loss = {"temperature": 0.05, "contextual_weights": [1.0, 1.0, 1.0]} if arm == "contextual" else {
        "temperature": 0.05}
    summary = train_stage(stage_config(
        stage="contextual" if arm == "contextual" else "pairs", model=str(base), output=str(out),
        batch_size=args.batch_size, max_length=args.max_length, query_max_length=64, seed=seed, log_every=1,
        max_steps=args.steps, bf16=args.bf16, loss=loss, optim={"lr": args.lr, "warmup_steps": 5},
        phases=[{"data": str(data), "name": f"xquad-en-{arm}"}]), progress=False)
    losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    result = {"steps": summary["steps"], "loss_curve": [round(x, 4) for x in losses],
              "loss_first10": round(sum(losses[:10]) / len(losses[:10]), 4),
              "loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4), "seconds": round(time.time() - t0, 1)}
    done.write_text(json.dumps(result))
    return result


ARMS = ("contextual", "pairs")


def main() -> int:
    from pplx_embed.engine.backends import native_bf16
    from pplx_embed.engine.threads import cpu_flags

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=512, help="MiniLM window for training and evaluation")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8, help="queries per step (their documents are embedded whole)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--docs", type=int, default=0, help="covidqa-ctx documents evaluated (seeded sample; 0 = all 98)")
    ap.add_argument("--seeds", default="0,1", help="training seeds (each arm runs once per seed)")
    ap.add_argument("--arms", default=",".join(ARMS), help="contextual (late-chunked, dual loss) and/or pairs "
                                                           "(the control: same queries, chunks alone, InfoNCE)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 training even on CPUs with bf16")
    add_run_args(ap, "/tmp/pplx-train-bench/contextual", ROOT / "docs" / "benchmarks" / "train_contextual_covidqa.json")
    args = ap.parse_args()
    args.bf16 = args.bf16 and native_bf16(cpu_flags())
    work = start_run(args)
    started = time.time()

    base = widened_minilm(work / f"minilm-{args.max_length}", args.max_length)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    files = {"contextual": work / "xquad-en-contextual.jsonl"}
    train_data = xquad_contextual(files["contextual"], tokenizer, args.max_length)
    files["pairs"] = pairs_of(files["contextual"], work / "xquad-en-pairs.jsonl")
    log.info("training data: %s", train_data)
    ds = covidqa_subset(args.docs, 0)
    log.info("eval: covidqa-ctx, %d documents, %d chunks, %d queries", len(ds.documents), len(ds.corpus_ids),
             len(ds.query_ids))

    def cached_eval(name: str, model: Path) -> dict:
        path = work / f"eval-{name}-{args.docs}.json"
        if not path.is_file():
            path.write_text(json.dumps(evaluate(model, ds)))
        return json.loads(path.read_text())

    results = {"before": cached_eval("before", base)}
    runs = {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            runs[f"{arm}-s{seed}"] = train_arm(work, arm, seed, base, files[arm], args)
            results[f"{arm}-s{seed}"] = cached_eval(f"{arm}-s{seed}", work / f"{arm}-s{seed}" / "last")
    print(f"{'model':<22}{'independent':>12}{'late':>8}{'late-indep':>11}")
    for name, r in results.items():
        ind, late = r["independent"]["ndcg@10"], r["late"]["ndcg@10"]
        print(f"{name:<22}{ind:>12.4f}{late:>8.4f}{(late - ind) * 100:>+11.1f}")
    means = {}
    for arm in args.arms.split(","):
        rows = [r for n, r in results.items() if n.startswith(f"{arm}-s")]
        means[arm] = {mode: round(sum(r[mode]["ndcg@10"] for r in rows) / len(rows), 4)
                      for mode in ("independent", "late")}
    print("mean over seeds:", json.dumps(means))
    record = {
        "benchmark": "train_contextual_covidqa", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"{cpu_description()} (CPU only, torch.set_num_threads({args.threads}))",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "model": "sentence-transformers/all-MiniLM-L6-v2 (bundled), window raised to "
                 f"{args.max_length} tokens (sentence_bert_config max_seq_length)",
        "settings": {k: v for k, v in vars(args).items() if k not in ("fresh", "out", "work")},
        "training": {"data": "xquad/en as contextual documents (articles cut into windows of consecutive paragraphs)",
                     **train_data,
                     "contextual": "late-chunked documents; in-batch chunk + in-sequence chunk + document InfoNCE, "
                                   "weights 1/1/1, temperature 0.05",
                     "pairs": "control: the same queries in the same batches, each with its chunk alone as the "
                              "positive; in-batch InfoNCE, temperature 0.05",
                     "runs": runs},
        "eval": {"set": "covidqa-ctx", "documents": len(ds.documents), "chunks": len(ds.corpus_ids),
                 "queries": len(ds.query_ids), "precision": "float, full dimension",
                 "truncation": "right", "code": "pplx_embed.eval.tasks.contextual (pplx-embed eval --contextual)"},
        "results": results, "mean_over_seeds": means,
        "seconds_this_invocation": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
