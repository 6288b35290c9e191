"""Fine-tuning that generalizes (issue 29): every variant scored in-domain *and* on what it was not trained on.

Variants, each with seeds 0 and 1, all starting from the bundled all-MiniLM-L6-v2 and trained on the
same MedQuAD pairs with the same held-out slice, mined negatives and batches per seed:

* ``plain``  — the recipe of docs/training.md (held-out slice, 1 mined hard negative, lr 5e-5, 1 epoch);
* ``default`` — ``plain``'s best merged at ``pplx-embed finetune``'s default T (what it writes to OUT/merged);
* ``auto``   — ``plain``'s best merged the way ``pplx-embed finetune --merge-start auto --check …`` merges:
  the largest T of ``MERGE_GRID`` whose every check loses at most ``FORGET_LIMIT`` points, the checks
  being *selection* sets only (never a reported figure): ``--select-queries`` xquad/en and covidqa-ctx
  questions that are not among the reported ones, and STS-B en **dev**;
* ``replay`` — ``plain`` with general pairs mixed in (25% as many as the domain pairs): (summary line,
  body) of the Python standard library's docstrings, extracted by rule at run time — the only
  general-domain pairs that exist offline here (title → body pairs, like much of MiniLM's training data);
* ``len256`` — ``plain`` with documents of 256 tokens (finetune's default, MiniLM's own limit) instead of
  ``--max-length``; also reported merged both ways (``len256-default``, ``len256-auto``);
* ``lowlr``  — lr 2e-5 and half the steps;
* ``lora``   — a rank-16 LoRA adapter (peft, every linear layer) at lr 5e-4, same data and steps.

Reported for every model (each evaluated once; the start model once for all):

* in-domain: ``medquad/dev`` nDCG@10 (``--dev-queries`` random queries, 0 = all 1,000; the corpus is all
  their relevant answers plus random others up to ``--dev-corpus`` rows, 0 = all 15,809);
* phrasing: the same dev queries, same corpus and judgments, with MedQuAD's question templates
  **rewritten** ("What are the symptoms of X ?" → "How do I know if I have X, what signs should I watch
  for?") or **removed** (→ "X warning signs"), by the fixed rules of ``REWRITES`` below;
* forgetting (general sets, not trained on): ``xquad/en`` nDCG@10 (``--xquad-queries``), ``covidqa-ctx`` nDCG@10 (chunks
  alone; ``--covid-queries`` queries, corpus subset ``--covid-corpus``), ``stsb/en-test`` Spearman. The
  reported queries are drawn first (seed 0); the selection slices come from the rest.

Resumable: finished steps are skipped. Writes docs/benchmarks/train_generalization.json and .md.

    .venv/bin/python bench/train_generalization.py                      # the comparison (hours on 2 CPU cores)
    .venv/bin/python bench/train_generalization.py --pairs 300 --holdout 40 --dev-corpus 300 \
        --covid-queries 50 --covid-corpus 100 --select-queries 40 --max-steps 2 --batch-size 8 \
        --work /tmp/gen-smoke                                                                    # smoke test
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import random
import re
import shutil
import sys
import sysconfig
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_args, start_run  # noqa: E402
from pplx_embed.engine.threads import cpu_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
log = logging.getLogger("train_generalization")
VARIANTS = ("plain", "len256", "replay", "lowlr", "lora")
MERGED = ("plain", "len256")  # trained variants also reported merged: at finetune's T without checks, and T auto
SEEDS = (0, 1)

# MedQuAD's question templates → (rewritten question, template removed: entity + a plain intent word).
REWRITES = [
    (r"What is \(are\) (?P<x>.+?) \?", "Can you explain what {x} is?", "{x} overview"),
    (r"What are the symptoms of (?P<x>.+?) \?", "How do I know if I have {x}, what signs should I watch for?",
     "{x} warning signs"),
    (r"What are the treatments for (?P<x>.+?) \?", "How do doctors manage {x} and which therapies help?",
     "{x} therapy options"),
    (r"How many people are affected by (?P<x>.+?) \?", "How common is {x}?", "{x} prevalence"),
    (r"What are the genetic changes related to (?P<x>.+?) \?", "Which genes or mutations are behind {x}?",
     "{x} mutations"),
    (r"Is (?P<x>.+?) inherited \?", "Can {x} be passed down in families?", "{x} heredity"),
    (r"What causes (?P<x>.+?) \?", "Why do people get {x}?", "{x} origin"),
    (r"How to diagnose (?P<x>.+?) \?", "Which tests show whether someone has {x}?", "{x} testing"),
    (r"What is the outlook for (?P<x>.+?) \?", "What is the prognosis for people with {x}?", "{x} prognosis"),
    (r"Who is at risk for (?P<x>.+?)\?? \?", "Who is more likely to get {x}?", "{x} risk factors"),
    (r"what research \(or clinical trials\) is being done for (?P<x>.+?) \?",
     "Are scientists running any studies on {x}?", "{x} studies"),
    (r"What to do for (?P<x>.+?) \?", "How should {x} be handled day to day?", "{x} self-care"),
    (r"What are the stages of (?P<x>.+?) \?", "How does {x} progress from early to advanced?", "{x} staging"),
    (r"What are the complications of (?P<x>.+?) \?", "What problems can {x} lead to?", "{x} consequences"),
    (r"How to prevent (?P<x>.+?) \?", "How can I lower my chances of getting {x}?", "{x} avoidance"),
    (r"Do you have information about (?P<x>.+?)", "Tell me about {x}.", "{x}"),
]
_RULES = [(re.compile(rf"^\s*{pattern}\s*$", re.IGNORECASE), rewritten, removed)
          for pattern, rewritten, removed in REWRITES]


def rephrase(question: str, style: str) -> str:
    """``question`` with its MedQuAD template ``rewritten`` or ``removed``; unchanged when no template matches."""
    for rule, rewritten, removed in _RULES:
        if m := rule.match(question):
            return (rewritten if style == "rewritten" else removed).format(x=m["x"].strip())
    return question


# ---- data ------------------------------------------------------------------------------------------
def subset_pairs(work: Path, count: int) -> Path:
    """``count`` MedQuAD training pairs drawn at random (seed 0, the same for every variant and seed)."""
    out = work / f"medquad-train-{count}.jsonl"
    if not out.is_file():
        lines = [line for line in (DATA / "medquad" / "train.jsonl").read_text().splitlines() if line.strip()]
        if count < len(lines):
            lines = [lines[i] for i in sorted(random.Random(0).sample(range(len(lines)), count))]
        out.write_text("\n".join(lines) + "\n")
    return out


def stdlib_pairs(work: Path) -> Path:
    """General pairs: (summary paragraph, following paragraphs) of every docstring in Python's standard
    library with a summary of 4+ words and a body of 15+ words (read with ``ast``, nothing imported)."""
    out = work / "general-pairs.jsonl"
    if out.is_file():
        return out
    root = Path(sysconfig.get_paths()["stdlib"])
    seen, rows = set(), []
    for path in sorted(root.rglob("*.py")):
        if any(part in ("test", "tests", "site-packages", "idle_test") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
            if len(paragraphs) < 2:
                continue
            summary, body = paragraphs[0], " ".join(paragraphs[1:])[:1200]
            if len(summary.split()) >= 4 and len(body.split()) >= 15 and summary not in seen:
                seen.add(summary)
                rows.append({"query": summary, "positive": body})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log.info("general pairs: %d stdlib docstrings -> %s", len(rows), out)
    return out


# ---- training --------------------------------------------------------------------------------------
def train(work: Path, variant: str, seed: int, args: argparse.Namespace) -> Path:
    """Run one variant (resumable); returns its output folder."""
    from pplx_embed.train.finetune import finetune

    out = work / f"{variant}-s{seed}"
    if (out / "summary.json").is_file():
        return out
    plain = work / f"plain-s{seed}"
    reuse = variant in ("len256", "lowlr", "lora") and (plain / "mined-0.json").is_file()
    if reuse and not (out / "mined-0.json").exists():
        out.mkdir(parents=True, exist_ok=True)  # same start model, data and mining: reuse plain's negatives
        for name in ("mined-0.jsonl", "mined-0.json"):
            shutil.copy2(plain / name, out / name)
    options = {"lr": args.lr, "hard_negatives": 1, "max_length": args.max_length, "batch_size": args.batch_size,
               "seed": seed, "log_every": 5, "warmup_steps": args.warmup_steps, "max_steps": args.max_steps}
    if variant == "lowlr":
        steps = json.loads((plain / "summary.json").read_text())["steps"]
        options |= {"lr": args.lr * 0.4, "max_steps": max(1, steps // 2)}
    elif variant == "lora":
        options |= {"lr": args.lora_lr, "lora": args.lora}
    elif variant == "len256":
        options |= {"max_length": 256}
    replay = str(stdlib_pairs(work)) if variant == "replay" else None
    started = time.time()
    summary = finetune("minilm", str(subset_pairs(work, args.pairs)), str(out), holdout=args.holdout,
                       merge_start=None, replay=replay, progress=False,
                       resume=(out / "last" / "trainer_state.pt").is_file(), **options)
    summary["seconds"] = round(time.time() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("%s-s%d: %d steps, held-out %.4f -> %.4f (%d s)", variant, seed, summary["steps"],
             summary["before"]["ndcg@10"], summary["best"], summary["seconds"])
    return out


# ---- evaluation ------------------------------------------------------------------------------------
def embedder_of(model: str):
    from pplx_embed.train.checks import check_embedder

    if "+" in model:
        base, _, adapter = model.partition("+")
        return check_embedder(base, adapter)
    return check_embedder(model)


def score_queries(embedder, data, variants: dict[str, list[str]]) -> dict[str, float]:
    """nDCG@10 × 100 of several query texts for the same queries against one corpus embedded once."""
    from pplx_embed.eval.metrics import evaluate
    from pplx_embed.model.quantization import cosine_similarity
    from pplx_embed.train.evaluation import pooled

    corpus = pooled(embedder, data.corpus_texts)
    out = {}
    for name, texts in variants.items():
        run = top_run(data, cosine_similarity(pooled(embedder, texts), corpus))
        out[name] = round(100 * evaluate(data.qrels, run)["ndcg@10"], 2)
    return out


def top_run(data, scores: np.ndarray, k: int = 100) -> dict[str, dict[str, float]]:
    """Each query's ``k`` best corpus rows with their scores, as a TREC run."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return {q: {data.corpus_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(data.query_ids)}


def phrasings(texts: list[str]) -> dict[str, list[str]]:
    return {"original": texts, "rewritten": [rephrase(t, "rewritten") for t in texts],
            "removed": [rephrase(t, "removed") for t in texts]}


def evaluate_model(work: Path, name: str, model: str, args: argparse.Namespace) -> dict:
    """The reported figures of one model (cached in ``eval-<name>.json``)."""
    from pplx_embed.train.checks import run_check
    from pplx_embed.train.evaluation import load_eval_set

    out = work / f"eval-{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    started = time.time()
    embedder = embedder_of(model)
    dev = load_eval_set(str(DATA / "medquad" / "dev"), args.dev_queries or None, args.dev_corpus or None, 0)
    medquad = score_queries(embedder, dev, phrasings(dev.query_texts))
    record = {"model": model, "medquad/dev": medquad["original"], "medquad/dev rewritten": medquad["rewritten"],
              "medquad/dev removed": medquad["removed"],
              "xquad/en": round(run_check(embedder, DATA / "xquad" / "en", args.xquad_queries or None), 2),
              "covidqa-ctx": round(run_check(embedder, DATA / "covidqa-ctx", args.covid_queries or None,
                                             args.covid_corpus or None), 2),
              "stsb/en-test": round(run_check(embedder, DATA / "stsb" / "en-test.tsv"), 2),
              "engine": embedder.engine_info.to_dict(), "seconds": round(time.time() - started)}
    out.write_text(json.dumps(record, indent=2))
    log.info("%s: %s", name, {k: v for k, v in record.items() if isinstance(v, float)})
    return record


def sts_dev(work: Path, pairs: int) -> Path:
    """STS-B en dev, or ``pairs`` of its pairs drawn at random (seed 0) — a selection set, never reported."""
    source = DATA / "stsb" / "en-dev.tsv"
    if not pairs:
        return source
    out = work / f"stsb-en-dev-{pairs}.tsv"
    if not out.is_file():
        header, *rows = source.read_text(encoding="utf-8").splitlines()
        keep = sorted(random.Random(0).sample(range(len(rows)), min(pairs, len(rows))))
        out.write_text("\n".join([header, *(rows[i] for i in keep)]) + "\n", encoding="utf-8")
    return out


def selection_slice(work: Path, name: str, source: Path, reported: int, count: int, corpus: int) -> Path:
    """A BEIR folder of ``count`` questions of ``source`` not among the ``reported`` ones (drawn as the reported
    evaluation draws them), with their relevant rows plus random others up to ``corpus`` rows (0: all), each row
    alone (no document fields)."""
    from pplx_embed.train.evaluation import load_eval_set

    out = work / "select" / name
    if (out / "qrels" / "test.tsv").is_file():
        return out
    shown = set(load_eval_set(str(source), reported or None, None, 0).query_ids)
    full = load_eval_set(str(source))
    rest = [q for q in full.query_ids if q not in shown]
    if len(rest) < count:
        sys.exit(f"{name}: {len(rest)} questions are left beside the {len(shown)} reported ones, "
                 f"--select-queries {count} needs fewer reported questions")
    picked = set(random.Random(1).sample(rest, count))
    relevant = {d for q in picked for d, g in full.qrels[q].items() if g > 0}
    others = [c for c in full.corpus_ids if c not in relevant]
    keep = relevant | set(random.Random(1).sample(others, max(0, min(len(others), corpus - len(relevant))))
                          if corpus else others)
    rows = map(json.loads, (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines())
    lines = {"corpus.jsonl": [json.dumps({k: row[k] for k in ("_id", "title", "text")}, ensure_ascii=False)
                              for row in rows if row["_id"] in keep],  # chunks alone, as the checks embed them
             "queries.jsonl": [line for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()
                               if json.loads(line)["_id"] in picked],
             "qrels/test.tsv": ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q in sorted(picked)
                                                                 for d, g in full.qrels[q].items()]}
    for rel, rows in lines.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def selection_checks(work: Path, args: argparse.Namespace) -> list[str]:
    """The check sets ``auto`` chooses T on: never a reported question or pair."""
    return [str(selection_slice(work, "xquad-en", DATA / "xquad" / "en", args.xquad_queries, args.select_queries, 0)),
            str(selection_slice(work, "covidqa-ctx", DATA / "covidqa-ctx", args.covid_queries, args.select_queries,
                                args.covid_corpus * args.select_queries // max(1, args.covid_queries))),  # same mix
            str(sts_dev(work, args.sts_dev_pairs))]


def prefix(variant: str) -> str:
    return "" if variant == "plain" else f"{variant}-"


def default_merge(work: Path, variant: str, seed: int) -> str:
    """A variant's best merged at finetune's T without checks (what `pplx-embed finetune` writes to OUT/merged)."""
    from pplx_embed.train.config import MERGE_START
    from pplx_embed.train.merge import merge_checkpoints

    path = work / f"{prefix(variant)}merge-s{seed}-t{MERGE_START}"
    if not (path / "merge.json").is_file():
        merge_checkpoints("minilm", work / f"{variant}-s{seed}" / "best", path, MERGE_START, overwrite=True)
    return str(path)


def auto_merge(work: Path, variant: str, seed: int, args: argparse.Namespace) -> dict:
    """A variant's best merged with T chosen on the selection checks (cached in ``[variant-]auto-s<seed>.json``)."""
    from pplx_embed.train.finetune import merge_toward_start

    name = f"{prefix(variant)}auto-s{seed}"
    record = work / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    merged = merge_toward_start("minilm", work / f"{variant}-s{seed}" / "best", work / name, "auto",
                                selection_checks(work, args), progress=False)
    record.write_text(json.dumps(merged, indent=2))
    log.info("%s: t=%s, selection checks %s", name, merged["t"], merged["checks"])
    return merged


FULL_SETS = {"xquad/en": DATA / "xquad" / "en", "covidqa-ctx": DATA / "covidqa-ctx"}


def full_general(work: Path, name: str, model: str) -> dict[str, dict[str, float]]:
    """Per-question nDCG@10 of one model on every question of xquad/en and covidqa-ctx against their whole
    corpora (cached in ``full-<name>.json``): the forgetting figures with the least sampling noise."""
    import pytrec_eval

    from pplx_embed.model.quantization import cosine_similarity
    from pplx_embed.train.evaluation import load_eval_set, pooled

    out = work / f"full-{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    embedder, record = embedder_of(model), {}
    for set_name, path in FULL_SETS.items():
        data = load_eval_set(str(path))
        run = top_run(data, cosine_similarity(pooled(embedder, data.query_texts), pooled(embedder, data.corpus_texts)))
        qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in data.qrels.items()}
        per = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        record[set_name] = {q: 100 * per.get(q, {}).get("ndcg_cut_10", 0.0) for q in data.query_ids}
    out.write_text(json.dumps(record))
    return record


def full_report(work: Path, models: dict[str, str]) -> tuple[list[str], dict]:
    """Δ to the start on the full general sets with a paired bootstrap 95% interval (2,000 resamples)."""
    start = full_general(work, "start", "minilm")
    rng = np.random.default_rng(0)
    lines = ["| model | " + " | ".join(f"{s} Δ [95% CI]" for s in FULL_SETS) + " |", "|---|" + "---:|" * len(FULL_SETS),
             "| start (all-MiniLM-L6-v2) | " + " | ".join(f"{np.mean(list(start[s].values())):.2f}" for s in FULL_SETS)
             + " |"]
    record = {}
    for name, model in models.items():
        scores, cells = full_general(work, name, model), []
        for set_name in FULL_SETS:
            delta = np.array([scores[set_name][q] - start[set_name][q] for q in start[set_name]])
            boot = [delta[rng.integers(0, len(delta), len(delta))].mean() for _ in range(2000)]
            low, high = np.percentile(boot, [2.5, 97.5])
            record.setdefault(name, {})[set_name] = {"delta": round(float(delta.mean()), 2), "ci95": [
                round(float(low), 2), round(float(high), 2)], "questions": len(delta)}
            cells.append(f"{delta.mean():+.2f} [{low:+.2f}, {high:+.2f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines, record


# ---- report ----------------------------------------------------------------------------------------
COLUMNS = ("medquad/dev", "medquad/dev rewritten", "medquad/dev removed", "xquad/en", "covidqa-ctx", "stsb/en-test")


def report(work: Path, args: argparse.Namespace, runs: dict, evals: dict, merges: dict,
           full: tuple[list[str], dict] = ([], {})) -> None:
    from pplx_embed.train.config import MERGE_START

    start = evals.get("start")
    if start is None:
        return
    lines = ["| model | seed | " + " | ".join(COLUMNS) + " | general Δ max loss |",
             "|---|---|" + "---:|" * (len(COLUMNS) + 1)]
    lines.append("| start (all-MiniLM-L6-v2) | – | " + " | ".join(f"{start[c]:.1f}" for c in COLUMNS) + " | – |")
    means = {}
    for variant in ("plain", "default", "auto", "len256", "len256-default", "len256-auto", "replay", "lowlr", "lora"):
        rows = [(s, evals[f"{variant}-s{s}"]) for s in SEEDS if f"{variant}-s{s}" in evals]
        for seed, e in rows:
            loss = min(e[c] - start[c] for c in ("xquad/en", "covidqa-ctx", "stsb/en-test"))
            kind = variant.rpartition("-")[2]
            label = (variant.rpartition("-")[0] or "plain") + {"default": f" merged, T={MERGE_START} (no checks)",
                                                               "auto": " merged, T auto"}[kind] \
                if kind in ("default", "auto") else variant
            label += f" (T={merges[f'{variant}-s{seed}']['t']})" if kind == "auto" else ""
            lines.append(f"| {label} | {seed} | " + " | ".join(f"{e[c]:.1f} ({e[c] - start[c]:+.1f})" for c in COLUMNS)
                         + f" | {loss:+.1f} |")
        if len(rows) == len(SEEDS):
            means[variant] = {c: round(float(np.mean([e[c] for _, e in rows])), 2) for c in COLUMNS}
    lines += ["", "Means over seeds (Δ to the start):", "",
              "| variant | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for variant, m in means.items():
        lines.append(f"| {variant} | " + " | ".join(f"{m[c]:.1f} ({m[c] - start[c]:+.1f})" for c in COLUMNS) + " |")
    if full[0]:
        lines += ["", "Forgetting on the **whole** general sets (every question, whole corpus), models chosen on "
                  "nothing (trained and no-check merges; the auto merges chose T on part of these questions):", "",
                  *full[0]]
    record = {
        "benchmark": "train_generalization", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": cpu_description(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "fresh")},
        "start": start, "evals": evals, "means": means, "merges": merges, "runs": runs, "full_general": full[1],
    }
    out = Path(args.out)
    out.write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(
        f"# Fine-tuning that generalizes ({record['date']})\n\n{record['device']}; settings: "
        f"{json.dumps(record['settings'])}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=14376, help="MedQuAD training pairs drawn (14376: all)")
    ap.add_argument("--holdout", type=int, default=1000, help="training pairs held out (best checkpoint, selection)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lora", type=int, default=16, help="LoRA rank of the lora variant")
    ap.add_argument("--lora-lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128, help="document tokens in training (queries: 64)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of the steps")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--dev-queries", type=int, default=0, help="medquad/dev queries (0: all 1,000)")
    ap.add_argument("--dev-corpus", type=int, default=0, help="medquad/dev corpus rows (0: all 15,809)")
    ap.add_argument("--xquad-queries", type=int, default=890, help="xquad/en queries reported (of 1,190; corpus: all)")
    ap.add_argument("--covid-queries", type=int, default=1080, help="covidqa-ctx queries reported (of 1,380)")
    ap.add_argument("--covid-corpus", type=int, default=0, help="covidqa-ctx chunks (0: all 1,909)")
    ap.add_argument("--sts-dev-pairs", type=int, default=0, help="STS-B en dev pairs for selecting T (0: all 1,500)")
    ap.add_argument("--select-queries", type=int, default=300,
                    help="xquad/en and covidqa-ctx questions, none of them reported, for selecting T")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1")
    add_run_args(ap, "/tmp/pplx-train-bench/generalization",
                 ROOT / "docs" / "benchmarks" / "train_generalization.json")
    args = ap.parse_args()
    global SEEDS
    SEEDS = tuple(int(s) for s in args.seeds.split(","))
    work = start_run(args)
    variants = [v for v in args.variants.split(",") if v]
    runs, evals, merges = {}, {}, {}
    evals["start"] = evaluate_model(work, "start", "minilm", args)
    for variant in variants:  # every seed of a variant before the next variant: partial results stay comparable
        for seed in SEEDS:
            out = train(work, variant, seed, args)
            summary = json.loads((out / "summary.json").read_text())
            summary.pop("history", None)
            runs[f"{variant}-s{seed}"] = summary
            model = f"minilm+{out / 'best'}" if variant == "lora" else str(out / "best")
            evals[f"{variant}-s{seed}"] = evaluate_model(work, f"{variant}-s{seed}", model, args)
            if variant in MERGED:
                path = default_merge(work, variant, seed)  # cached by T: a changed default is evaluated anew
                evals[f"{prefix(variant)}default-s{seed}"] = evaluate_model(work, Path(path).name, path, args)
                name = f"{prefix(variant)}auto-s{seed}"
                merges[name] = auto_merge(work, variant, seed, args)
                evals[name] = evaluate_model(work, name, merges[name]["output"], args)
            report(work, args, runs, evals, merges)
    chosen_on_nothing = {}
    for variant in (v for v in variants if v in MERGED):
        for seed in SEEDS:
            chosen_on_nothing[f"{variant}-s{seed}"] = str(work / f"{variant}-s{seed}" / "best")
            chosen_on_nothing[f"{prefix(variant)}default-s{seed}"] = default_merge(work, variant, seed)
    report(work, args, runs, evals, merges, full_report(work, chosen_on_nothing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
