"""Result files (JSON), Markdown tables and matplotlib plots, plus the settings guide for users.

A results file is ``{"runs": [meta, ...], "results": [record, ...]}``: ``meta`` says which model,
command, device, library versions and date produced the records; each record is one task ×
dataset × setting from ``pplx_embed.eval.tasks``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from pplx_embed.atomic import write_text
from pplx_embed.engine.threads import cpu_model
from pplx_embed.errors import InputError

PRECISION_LABEL = {"float": "float32", "int8": "int8", "binary": "binary",
                   "binary+rescore": "binary + int8 rescore"}
RETRIEVAL_COLUMNS = (("ndcg@10", "nDCG@10"), ("accuracy@1", "Acc@1"), ("recall@1", "R@1"), ("recall@10", "R@10"),
                     ("recall@100", "R@100"), ("recall@1000", "R@1000"), ("mrr@10", "MRR@10"), ("map", "MAP"))


# ---- files -----------------------------------------------------------------------------------
def run_meta(embedder, command: str | None = None, seconds: float | None = None, **extra) -> dict:
    """Who/what/where of a run: model info, command, device, versions, date."""
    import numpy
    import torch

    import pplx_embed

    return {
        "model": embedder.info(), "command": command,
        "device": embedder.device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "seconds": None if seconds is None else round(seconds, 1),
        "versions": {"pplx_embed": pplx_embed.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "python": sys.version.split()[0]},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **extra,
    }


def save(path: str | Path, runs: list[dict], results: list[dict]) -> Path:
    return write_text(path, json.dumps({"runs": runs, "results": results}, indent=1, ensure_ascii=False) + "\n")


def load(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """Merge results files: all runs, all records."""
    runs, results = [], []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"results file not found: {p}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: not a results file ({exc.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise InputError(f"{p}: not a results file (no 'results' list)")
        runs += data.get("runs", [])
        results += data["results"]
    return runs, results


# ---- tables ----------------------------------------------------------------------------------
def _by(results: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return groups


def _fmt_bytes(b: float) -> str:
    return f"{b:g}"


def _main_metric(r: dict) -> float:
    return r["metrics"]["spearman"] if r["task"] == "sts" else r["metrics"]["ndcg@10"]


def _headline(results: list[dict]) -> list[dict]:
    """One series per data set: retrieval and STS, late chunking for contextual sets, and of parallel
    languages only English (the language plot and the tables show the others)."""
    return [r for r in results if (r["task"] in ("retrieval", "sts") and r.get("language") in (None, "en"))
            or (r["task"] == "contextual" and r["mode"] == "late")]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"  # None: a metric older results files lack


def _grid_table(rows: list[dict], with_mode: bool = False) -> list[str]:
    head = (["mode"] if with_mode else []) + ["precision", "dims", "bytes/vector"] + [h for _, h in RETRIEVAL_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["mode"]] if with_mode else []) + [PRECISION_LABEL[r["precision"]], str(r["dimensions"]),
                                                      _fmt_bytes(r["bytes"])]
        cells += [_pct(r["metrics"].get(k)) for k, _ in RETRIEVAL_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _note(r: dict) -> str:
    over = r.get("over_limit") or {}
    parts = [f"{r.get('queries', r.get('pairs'))} {'queries' if 'queries' in r else 'pairs'}"]
    if r.get("corpus_sampled_from"):
        parts.append(f"**sampled corpus**: {r['corpus']} of {r['corpus_sampled_from']} rows (every judged row plus "
                     "random others; scores are higher than on the full corpus)")
    elif "corpus" in r:
        parts.append(f"{r['corpus']} corpus rows")
    if "documents" in r:
        parts.append(f"{r['documents']} documents")
    if r["query_model"] != r["model"]:
        parts.append(f"query model `{r['query_model']}`")
    if any(over.values()):
        what = ", ".join(f"{n} {k}" for k, n in over.items() if n)
        parts.append(f"longer than the model's context and cut (truncation={r['truncation']!r}): {what}")
    return "; ".join(parts)


def markdown_tables(results: list[dict]) -> str:
    """All results as Markdown sections, one per task × dataset."""
    out: list[str] = []
    for (task, dataset, model), rows in _by([r for r in results if r["task"] in ("retrieval", "contextual")],
                                            "task", "dataset", "model").items():
        out += [f"### {dataset} — {task} ({model})", "", _note(rows[0]), ""]
        out += _grid_table(rows, with_mode=task == "contextual") + [""]
    cross = [r for r in results if r["task"] in ("cross-lingual", "query-to-query")]
    for (task, model), rows in _by(cross, "task", "model").items():
        metric = "ndcg@10" if task == "cross-lingual" else "mrr@10"
        langs = sorted({r["query_language"] for r in rows} | {r["corpus_language"] for r in rows})
        cell = {(r["query_language"], r["corpus_language"]): r["metrics"][metric] for r in rows}
        diag = {r["language"]: r["metrics"][metric] for r in results if r["task"] == "retrieval"
                and r.get("language") and r["model"] == model and r["precision"] == rows[0]["precision"]
                and r["dimensions"] == rows[0]["dimensions"]} if task == "cross-lingual" else {}
        qlangs = sorted({r["query_language"] for r in rows})
        clangs = [lang for lang in langs if any((q, lang) in cell for q in qlangs)]
        out += [f"### {task}: {rows[0]['dataset'].split('/')[0]} ({model}, "
                f"{PRECISION_LABEL[rows[0]['precision']]}, {rows[0]['dimensions']} dims) — {metric}", "",
                "rows: query language; columns: " + ("corpus language" if task == "cross-lingual" else
                                                      "language of the queries searched"), ""]
        out += ["| | " + " | ".join(clangs) + " |", "|---|" + "---|" * len(clangs)]
        for q in qlangs:
            vals = [cell.get((q, c), diag.get(q) if q == c else None) for c in clangs]
            out.append(f"| **{q}** | " + " | ".join("" if v is None else _pct(v) for v in vals) + " |")
        out.append("")
    for (dataset, model), rows in _by([r for r in results if r["task"] == "sts"], "dataset", "model").items():
        out += [f"### {dataset} — STS ({model})", "", _note(rows[0]), "",
                "| precision | dims | bytes/vector | Spearman ×100 |", "|---|---|---|---|"]
        out += [f"| {PRECISION_LABEL[r['precision']]} | {r['dimensions']} | {_fmt_bytes(r['bytes'])} | "
                f"{r['metrics']['spearman']:.1f} |" for r in rows]
        out.append("")
    return "\n".join(out)


# ---- plots -----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality_vs_bytes(results: list[dict], path: Path) -> Path | None:
    """One panel per dataset: main metric vs bytes per vector (log scale), a line per precision."""
    panels = _by(_headline(results), "dataset", "task", "model")
    panels = {k: v for k,
              v in panels.items() if len({r["dimensions"] for r in v}) + len({r["precision"] for r in v}) > 2}
    if not panels:
        return None
    plt = _plt()
    cols = min(len(panels), 2)
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.2 * nrows), squeeze=False)
    markers = {"float": "o", "int8": "s", "binary": "^", "binary+rescore": "D"}
    for ax, ((dataset, task, _model), rows) in zip(axes.flat, panels.items()):
        for precision, prow in _by(rows, "precision").items():
            prow = sorted(prow, key=lambda r: r["bytes"])
            xs, ys = [r["bytes"] for r in prow], [_main_metric(r) * (1 if task == "sts" else 100) for r in prow]
            ax.plot(xs, ys, marker=markers.get(precision[0], "o"), label=PRECISION_LABEL[precision[0]])
            for r, x, y in zip(prow, xs, ys):
                below = precision[0] == "binary+rescore"  # sits next to int8: label it underneath
                ax.annotate(str(r["dimensions"]), (x, y), textcoords="offset points",
                            xytext=(4, -11 if below else 4), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("bytes per vector (log scale); labels = dimensions")
        ax.set_ylabel("Spearman ×100" if task == "sts" else "nDCG@10 ×100")
        title = dataset + (" (late chunking)" if task == "contextual" else "")
        if rows[0].get("corpus_sampled_from"):
            title += f" ({rows[0]['corpus']} of {rows[0]['corpus_sampled_from']} docs)"
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Quality vs storage — {rows[0]['model']}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_contextual(results: list[dict], path: Path) -> Path | None:
    """Bars: nDCG@10 of independent vs late-chunked chunks, per precision at full dimension."""
    rows = [r for r in results if r["task"] == "contextual"]
    if not rows:
        return None
    plt = _plt()
    full = max(r["dimensions"] for r in rows)
    rows = [r for r in rows if r["dimensions"] == full]
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, mode in ((-width / 2, "independent"), (width / 2, "late")):
        vals = [next((100 * r["metrics"]["ndcg@10"] for r in rows if r["mode"] == mode and r["precision"] == p), 0)
                for p in precisions]
        bars = ax.bar([i + offset for i in range(len(precisions))], vals, width,
                      label="late chunking" if mode == "late" else "each chunk alone")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(precisions)), [PRECISION_LABEL[p] for p in precisions])
    ax.set_ylabel("nDCG@10 ×100")
    ax.set_title(f"{rows[0]['dataset']}: chunks alone vs late chunking\n{rows[0]['model']}, {full} dims", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_languages(results: list[dict], path: Path) -> Path | None:
    """Bars per language: nDCG@10 at full dimension, one bar per precision; plus the cross-lingual heatmap."""
    rows = [r for r in results if r["task"] == "retrieval" and r.get("language")]
    if len({r["language"] for r in rows}) < 2:
        return None
    plt = _plt()
    full = max(r["dimensions"] for r in rows)
    rows = [r for r in rows if r["dimensions"] == full]
    langs = sorted({r["language"] for r in rows})
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    cross = [r for r in results if r["task"] == "cross-lingual"]
    fig, axes = plt.subplots(1, 2 if cross else 1, figsize=(15 if cross else 9, 5), squeeze=False,
                             gridspec_kw={"width_ratios": [1.3, 1]} if cross else None)
    ax = axes[0][0]
    width = 0.8 / len(precisions)
    for j, p in enumerate(precisions):
        vals = [next((100 * r["metrics"]["ndcg@10"] for r in rows if r["language"] == lang and r["precision"] == p), 0)
                for lang in langs]
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(langs))], vals, width, label=PRECISION_LABEL[p])
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylabel("nDCG@10 ×100")
    ax.set_title(f"{rows[0]['dataset'].split('/')[0]} per language, same-language queries ({full} dims)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    if cross:
        cell = {(r["query_language"], r["corpus_language"]): r["metrics"]["ndcg@10"] for r in cross}
        diag = {r["language"]: r["metrics"]["ndcg@10"] for r in rows if r["precision"] == cross[0]["precision"]}
        matrix = [[100 * (diag.get(q, 0) if q == c else cell.get((q, c), 0)) for c in langs] for q in langs]
        ax = axes[0][1]
        im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100)
        ax.set_xticks(range(len(langs)), langs)
        ax.set_yticks(range(len(langs)), langs)
        ax.set_xlabel("corpus language")
        ax.set_ylabel("query language")
        for i in range(len(langs)):
            for j in range(len(langs)):
                ax.text(j, i, f"{matrix[i][j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i][j] < 50 else "black")
        ax.set_title(f"cross-lingual nDCG@10 ×100 ({PRECISION_LABEL[cross[0]['precision']]}, "
                     f"{cross[0]['dimensions']} dims)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(rows[0]["model"], fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(results: list[dict], fig_dir: str | Path) -> list[Path]:
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    made = [plot_quality_vs_bytes(results, fig_dir / "quality_vs_bytes.png"),
            plot_contextual(results, fig_dir / "contextual.png"),
            plot_languages(results, fig_dir / "languages.png")]
    return [p for p in made if p is not None]


# ---- guidance --------------------------------------------------------------------------------
def _find(rows: list[dict], precision: str, dims: int) -> dict | None:
    return next((r for r in rows if r["precision"] == precision and r["dimensions"] == dims), None)


def guidance(results: list[dict], runs: list[dict] = ()) -> str:
    """What the numbers mean for someone choosing settings, with this run's figures filled in."""
    lines = ["## What the numbers mean for choosing settings", ""]
    others = sorted({m["model"]["model"] for m in runs if m.get("model") and not m["model"].get("bidirectional")})
    if others:
        lines += [f"Measured with {', '.join(others)}, which is not a pplx-embed model: it was trained "
                  "without quantization-aware or Matryoshka objectives. pplx-embed models are trained for both "
                  "(their release reports binary costing 2-4 points at 0.6B and under 1.6 at 4B), so expect "
                  "them to lose less at int8, binary and small dimensions than shown here; run the same "
                  "commands with a pplx-embed checkpoint to measure it.", ""]
    groups = _by(_headline(results), "task", "dataset", "model")
    bullets = []
    for (task, dataset, _model), rows in groups.items():
        full = max(r["dimensions"] for r in rows)
        ref = _find(rows, "float", full)
        if ref is None:
            continue
        scale = 1 if task == "sts" else 100
        base = _main_metric(ref) * scale
        name = "Spearman" if task == "sts" else "nDCG@10"
        parts = []
        for precision, dims in (("int8", full), ("binary", full), ("binary+rescore", full), ("float", 256),
                                ("float", 128), ("int8", 256), ("binary+rescore", 256), ("binary", 128)):
            r = _find(rows, precision, dims)
            if r is not None and (precision, dims) != ("float", full):
                delta = _main_metric(r) * scale - base
                parts.append(f"{PRECISION_LABEL[precision]}@{dims} {delta:+.1f} ({_fmt_bytes(r['bytes'])} B)")
        if parts:
            sampled = (f" (sampled corpus: {ref['corpus']} of {ref['corpus_sampled_from']})"
                       if ref.get("corpus_sampled_from") else "")
            bullets.append(f"- **{dataset}**{sampled}{' (late chunking)' if task == 'contextual' else ''}: "
                           f"float32@{full} {name} {base:.1f} ({_fmt_bytes(ref['bytes'])} B); "
                           + ", ".join(parts) + ".")
    lines += ["Change against full-width float32, in points of the main metric (bytes stored per vector; "
              "binary + rescore counts the bits searched plus the int8 vector kept for rescoring):", ""]
    lines += bullets + [""]
    cut = [r for r in results if r.get("truncation") and any((r.get("over_limit") or {}).values())]
    if cut:
        seen = {}
        for r in cut:
            seen.setdefault(r["dataset"], ", ".join(f"{n} {k}" for k, n in r["over_limit"].items() if n))
        lines += [f"- **Truncation**: texts longer than the model's context were cut (truncation="
                  f"{cut[0]['truncation']!r}, applied explicitly): " + "; ".join(f"{d}: {w}" for d, w in seen.items())
                  + ". Their tails were not seen by the model, which lowers scores on long documents.", ""]
    ctx = [r for r in results if r["task"] == "contextual"]
    if ctx:
        full = max(r["dimensions"] for r in ctx)
        ind, late = (_find([r for r in ctx if r["mode"] == m], "float", full) for m in ("independent", "late"))
        if ind and late:
            d = 100 * (late["metrics"]["ndcg@10"] - ind["metrics"]["ndcg@10"])
            lines += [f"- **Late chunking** on {late['dataset']}: nDCG@10 {100 * ind['metrics']['ndcg@10']:.1f} with "
                      f"each chunk embedded alone vs {100 * late['metrics']['ndcg@10']:.1f} late-chunked ({d:+.1f}). "
                      "Late chunking helps when chunks need their document to be understood (pronouns, "
                      "section headings far above); it can only help as far as the model's window reaches: a model "
                      "whose window holds one chunk (≈256 tokens) sees almost no neighbouring text, so the two modes "
                      "differ little. pplx-embed-context-v1 reads 32K tokens and was trained for this.", ""]
    cross = [r for r in results if r["task"] == "cross-lingual"]
    if cross:
        same = [r["metrics"]["ndcg@10"] for r in results if r["task"] == "retrieval" and r.get("language")
                and r["precision"] == cross[0]["precision"] and r["dimensions"] == cross[0]["dimensions"]]
        other = [r["metrics"]["ndcg@10"] for r in cross]
        from_en = [r["metrics"]["ndcg@10"] for r in cross if r["query_language"] == "en"]
        text = (f"- **Across languages** ({cross[0]['dataset'].split('/')[0]}, {PRECISION_LABEL[cross[0]['precision']]}"
                f"@{cross[0]['dimensions']}): same-language retrieval averages nDCG@10 "
                f"{100 * sum(same) / max(len(same), 1):.1f} "
                f"over {len(same)} languages; queries against a corpus in another language average "
                f"{100 * sum(other) / len(other):.1f}")
        if from_en:
            text += f" (English queries: {100 * sum(from_en) / len(from_en):.1f})"
        q2q = [r["metrics"]["mrr@10"] for r in results if r["task"] == "query-to-query"]
        if q2q:
            text += ("; finding a query's own translation among another language's queries: "
                     f"MRR@10 {100 * sum(q2q) / len(q2q):.1f}")
        lines += [text + ". A large gap means the model matches surface words rather than meaning across "
                  "languages: choose a multilingual model (pplx-embed was trained cross-lingually) if users "
                  "search in one language and documents are in another.", ""]
    lines += [
        "How to read this:",
        "",
        "- **nDCG@10** rewards putting the relevant passage near the top of the first 10 results; it is the "
        "main number for search quality. **R@k** is the share of relevant passages found in the top k — use "
        "R@100/R@1000 if a re-ranker reads the candidates; **MRR@10** is 1/rank of the first hit.",
        "- **int8** stores 1 byte per dimension (4x less than float32) and usually costs well under a point: "
        "it is the default for pplx-embed and a safe choice.",
        "- **binary** stores 1 bit per dimension (32x less). Its loss depends on the model: pplx-embed is "
        "trained for it (quantization-aware); a model trained without it loses more. "
        "**binary + int8 rescore** searches the bits, then re-orders the best candidates with int8 vectors "
        "(kept on disk): most of the int8 quality at binary search cost — the usual choice for large corpora.",
        "- **Matryoshka dimensions** (128/256/…) keep the first d coordinates. Smaller d shrinks storage and "
        "search time linearly; pplx-embed is trained for truncation (MRL), models that are not degrade faster. "
        "Dimensions and precision multiply: 256 dims × binary is 32 bytes per vector.",
        "- Differences under about one point on a few hundred queries are within noise; "
        "always check on your own data with `pplx-embed eval`.",
        "",
    ]
    return "\n".join(lines)


def render(runs: list[dict], results: list[dict], fig_dir: str | Path, md_path: str | Path,
           title: str = "Evaluation report", generator: str = "pplx-embed report") -> Path:
    """Write the Markdown report (tables, plots, guidance) next to its figures."""
    md_path = Path(md_path)
    figs = plots(results, fig_dir)
    lines = [f"# {title}", "",
             f"Generated by `{generator}` from the results of `pplx-embed eval`; do not edit by hand.", ""]
    if runs:
        lines += ["## Runs", "", "Time is the wall clock of the whole run; embeddings served from the cache "
                  "(hits) cost no forward pass.", "",
                  "| command | model | device | threads | time | cache hits / misses | date |",
                  "|---|---|---|---|---|---|---|"]
        for m in runs:
            model = m.get("model", {})
            lines.append(f"| `{m.get('command') or ''}` | {model.get('model', '')} ({model.get('dimension', '')} dims, "
                         f"context {model.get('max_length', '')}) | {m.get('device')} ({m.get('cpu', '')}) | "
                         f"{m.get('torch_threads')} | {m.get('seconds')} s | "
                         f"{(m.get('cache') or {}).get('hits', '')} / {(m.get('cache') or {}).get('misses', '')} | "
                         f"{m.get('date')} |")
        versions = runs[-1].get("versions", {})
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += [guidance(results, runs)]
    if figs:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({os.path.relpath(p, md_path.parent)})" for p in figs] + [""]
    lines += ["## Results", "", markdown_tables(results)]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return md_path
