"""``pplx-embed eval`` (measure a model on a data set) and ``pplx-embed report`` (merge results into a
Markdown report with plots)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from pplx_embed.cli import CLIError, add_model_args, load_embedder
from pplx_embed.eval import datasets, report, tasks
from pplx_embed.eval.cache import DEFAULT_DIR, EmbeddingCache
from pplx_embed.eval.retrieval import DEFAULT_RESCORE, PRECISIONS


def _list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one value")
    bad = [t for t in items if allowed and t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    return items


def _dims(text: str) -> list[int | None]:
    out = []
    for t in _list(text):
        if t == "full":
            out.append(None)
        elif t.isdigit():
            out.append(int(t))
        else:
            raise argparse.ArgumentTypeError(f"dimensions must be integers or 'full', got {t!r}")
    return out


def _load_other(args: argparse.Namespace, model: str):
    from pplx_embed import Embedder

    return Embedder(model, device=args.device, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens)


def run_eval(args: argparse.Namespace) -> tuple[list[dict], object, EmbeddingCache]:
    """Load the data, pick the tasks it supports, run them; returns (records, embedder, cache)."""
    data = Path(args.data)
    if not data.exists():
        raise CLIError(f"data not found: {data}")
    cache = EmbeddingCache(None if args.no_cache else args.cache)
    settings = tasks.Settings(precisions=tuple(args.quantization), dimensions=tuple(args.dimensions),
                              truncation=args.truncation, rescore=args.rescore, cache=cache,
                              show_progress_bar=not args.quiet)
    embedder = load_embedder(args)
    query_embedder = _load_other(args, args.query_model) if args.query_model else None
    settings.dims(embedder.dimension)  # validate before any work
    if data.is_file():
        return tasks.sts(embedder, datasets.load_sts(data), settings), embedder, cache
    if datasets.is_beir(data):
        ds = datasets.load_beir(data, args.split)
        if args.sample_corpus:
            ds = datasets.sample_corpus(ds, args.sample_corpus)
        if args.contextual:
            return tasks.contextual(embedder, ds, settings, query_embedder), embedder, cache
        return tasks.query_to_doc(embedder, ds, settings, query_embedder), embedder, cache
    if args.contextual:
        raise CLIError(f"{data}: --contextual needs a BEIR directory whose corpus rows carry doc_id and chunk_index")
    parallel = datasets.parallel_sets(data)
    if parallel and args.sets:
        unknown = [name for name in args.sets if name not in parallel]
        if unknown:
            raise CLIError(f"{data} has no set {unknown[0]!r}; it has {', '.join(parallel)}")
        parallel = {name: parallel[name] for name in args.sets}
    if parallel:
        sets = {name: datasets.load_beir(path, args.split, f"{data.name}/{name}") for name, path in parallel.items()}
        records = tasks.cross_lingual(embedder, sets, settings, data.name, query_embedder, matrix=args.cross_lingual)
        if args.cross_lingual and len(sets) > 1:
            pivot = args.pivot if args.pivot in sets else next(iter(sets))
            records += tasks.query_to_query(embedder, sets, settings, data.name, pivot, query_embedder)
        return records, embedder, cache
    sts_files = sorted(data.glob(f"*{args.split}.tsv")) or sorted(data.glob("*.tsv"))
    if sts_files:
        return [r for f in sts_files for r in tasks.sts(embedder, datasets.load_sts(f), settings)], embedder, cache
    raise CLIError(f"{data}: not a BEIR directory (corpus.jsonl + queries.jsonl + qrels/), a folder of BEIR sets, "
                   "nor an STS .tsv file or folder of them")


def cmd_eval(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    records, embedder, cache = run_eval(args)
    if args.cross_lingual and not any(r["task"] == "cross-lingual" for r in records):
        print("pplx-embed eval: --cross-lingual needs a folder of parallel BEIR sets; ignored", file=sys.stderr)
    argv = shlex.join(["pplx-embed", "eval", *sys.argv[2:]]) if sys.argv[1:2] == ["eval"] else None
    meta = report.run_meta(embedder, argv, time.perf_counter() - start, data=str(args.data),
                           cache={"hits": cache.hits, "misses": cache.misses})
    out = Path(args.output)
    path = report.save(out / "results.json", [meta], records)
    report.render([meta], records, out, out / "report.md", title=f"Evaluation of {embedder.name} on {args.data}",
                  generator="pplx-embed eval")
    for r in records:
        if r["task"] in ("cross-lingual", "query-to-query"):
            continue  # a matrix: see report.md
        main = r["metrics"].get("ndcg@10", r["metrics"].get("spearman", 0.0))
        name = "spearman" if r["task"] == "sts" else "nDCG@10"
        main = main if r["task"] == "sts" else 100 * main
        mode = f" {r['mode']}" if "mode" in r else ""
        print(f"{r['task']:<15} {r['dataset']:<22}{mode:<12} {r['precision']:<15} {r['dimensions']:>5}d "
              f"{name} {main:6.2f}")
    print(f"wrote {path} and {out / 'report.md'} ({len(records)} results, {time.perf_counter() - start:.0f} s)",
          file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runs, results = report.load(args.results)
    if not results:
        raise CLIError("the results files hold no results")
    md = Path(args.output)
    figures = Path(args.figures) if args.figures else md.with_suffix("")
    command = shlex.join(["pplx-embed", *sys.argv[1:]]) if sys.argv[1:2] == ["report"] else "pplx-embed report"
    report.render(runs, results, figures, md, title=args.title, generator=command)
    report.save(figures / "results.json", runs, results)
    print(f"wrote {md}, plots and results.json in {figures}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="measure retrieval / STS quality of a model on a data set",
                        description="Evaluate a model on a BEIR directory (corpus.jsonl, queries.jsonl, "
                                    "qrels/<split>.tsv), a contextual BEIR directory (rows with doc_id + "
                                    "chunk_index), a folder of parallel BEIR sets (one per language), or STS "
                                    "tsv files, at every requested precision and dimension.")
    ev.add_argument("--data", required=True, help="BEIR directory, folder of BEIR sets, STS .tsv file or folder")
    ev.add_argument("--quantization", "-q", type=lambda t: _list(t, PRECISIONS), default=list(PRECISIONS),
                    help="comma list of " + ", ".join(PRECISIONS) + " (default: all)")
    ev.add_argument("--dimensions", "-d", type=_dims, default=[None],
                    help="comma list of Matryoshka dimensions and/or 'full', e.g. 128,256,full (default: full)")
    ev.add_argument("--contextual", action="store_true",
                    help="contextual set: compare chunks embedded alone vs late chunking over their document")
    ev.add_argument("--cross-lingual", action="store_true",
                    help="folder of parallel sets: also every query language against every corpus language, "
                         "and query-to-query retrieval from --pivot")
    ev.add_argument("--sets", type=_list, default=None,
                    help="folder of parallel sets: only these, e.g. en,de,zh (default: all)")
    ev.add_argument("--pivot", default="en", help="query language for query-to-query retrieval (default en)")
    ev.add_argument("--query-model", default=None, help="embed queries with this model (e.g. v1 queries, context-v1 chunks)")
    ev.add_argument("--rescore", type=int, default=DEFAULT_RESCORE,
                    help=f"binary+rescore: candidates re-ordered with int8 (default {DEFAULT_RESCORE})")
    ev.add_argument("--sample-corpus", type=int, default=None, metavar="N",
                    help="quick run on a big corpus: keep every judged row plus random others, N rows in all "
                         "(seed 0; recorded in the results)")
    ev.add_argument("--split", default="test", help="qrels split / STS file suffix (default test)")
    ev.add_argument("--output", "-o", default="eval-results", help="output folder (results.json, report.md, plots)")
    ev.add_argument("--cache", default=str(DEFAULT_DIR), help=f"embedding cache folder (default {DEFAULT_DIR})")
    ev.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_args(ev)
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="merge eval results into a Markdown report with plots")
    rep.add_argument("results", nargs="+", help="results.json files written by pplx-embed eval")
    rep.add_argument("--output", "-o", default="docs/quality.md", help="Markdown file (default docs/quality.md)")
    rep.add_argument("--figures", default=None, help="folder for the plots (default: next to the output, same stem)")
    rep.add_argument("--title", default="Quality report", help="report title")
    rep.set_defaults(func=cmd_report)
