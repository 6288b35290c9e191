"""``pplx-embed eval`` (measure a model on a data set) and ``pplx-embed report`` (merge results into a
Markdown report with plots)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from pplx_embed.cli.common import add_model_args, existing_path, field_values
from pplx_embed.errors import InputError
from pplx_embed.eval.retrieval import DEFAULT_RESCORE, PRECISIONS
from pplx_embed.options import EmbedderOptions, cache_dir


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


def cmd_eval(args: argparse.Namespace) -> int:
    from pplx_embed.eval import tasks
    from pplx_embed.eval.cache import EmbeddingCache
    from pplx_embed.eval.runner import run, write_report

    start = time.perf_counter()
    existing_path(args.data, "data")
    query_filter = field_values(args.query_filter, "--query-filter")  # checked before any model loads
    settings = tasks.Settings(precisions=tuple(args.quantization), dimensions=tuple(args.dimensions),
                              truncation=args.truncation, rescore=args.rescore,
                              cache=EmbeddingCache(None if args.no_cache else args.cache or cache_dir("eval")),
                              show_progress_bar=not args.quiet)
    options = EmbedderOptions.from_args(args)
    from pplx_embed.embedder import Embedder

    embedder = Embedder(options=options)
    query_embedder = Embedder(options=options.replace(model=args.query_model)) if args.query_model else None
    records = run(embedder, args.data, settings, query_embedder=query_embedder, split=args.split,
                  contextual=args.contextual, cross_lingual=args.cross_lingual, sets=args.sets, pivot=args.pivot,
                  sample_corpus=args.sample_corpus, query_filter=query_filter)
    argv = shlex.join(["pplx-embed", "eval", *sys.argv[2:]]) if sys.argv[1:2] == ["eval"] else None
    out = Path(args.output)
    path = write_report(records, embedder, args.data, out, time.perf_counter() - start, settings, argv)
    for r in records:
        if r["task"] in ("cross-lingual", "query-to-query"):
            continue  # a matrix: see report.md
        m = r["metrics"]
        score = f"spearman {m['spearman']:6.2f}" if r["task"] == "sts" else \
            f"nDCG@10 {100 * m['ndcg@10']:6.2f}  Acc@1 {100 * m['accuracy@1']:6.2f}"
        mode = f" {r['mode']}" if "mode" in r else ""
        print(f"{r['task']:<15} {r['dataset']:<22}{mode:<12} {r['precision']:<15} {r['dimensions']:>5}d {score}")
    print(f"wrote {path} and {out / 'report.md'} ({len(records)} results, {time.perf_counter() - start:.0f} s)",
          file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pplx_embed.eval import report

    runs, results = report.load(args.results)
    if not results:
        raise InputError("the results files hold no results")
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
    ev.add_argument("--query-filter", action="append", default=[], metavar="FIELD=VALUE",
                    help="evaluate only the queries whose FIELD (in queries.jsonl) equals VALUE (JSON or string); "
                         "repeatable, all must hold")
    ev.add_argument("--pivot", default="en", help="query language for query-to-query retrieval (default en)")
    ev.add_argument("--query-model", default=None,
                    help="embed queries with this model (e.g. v1 queries, context-v1 chunks)")
    ev.add_argument("--rescore", type=int, default=DEFAULT_RESCORE,
                    help=f"binary+rescore: candidates re-ordered with int8 (default {DEFAULT_RESCORE})")
    ev.add_argument("--sample-corpus", type=int, default=None, metavar="N",
                    help="quick run on a big corpus: keep every judged row plus random others, N rows in all "
                         "(seed 0; recorded in the results)")
    ev.add_argument("--split", default="test", help="qrels split / STS file suffix (default test)")
    ev.add_argument("--output", "-o", default="eval-results", help="output folder (results.json, report.md, plots)")
    ev.add_argument("--cache", default=None,
                    help="embedding cache folder (default: $PPLX_EMBED_CACHE/eval, else ~/.cache/pplx-embed/eval)")
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
