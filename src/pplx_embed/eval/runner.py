"""Run an evaluation on a data set and write its report: what ``pplx-embed eval`` and the demo call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pplx_embed.errors import InputError
from pplx_embed.eval import datasets, report, tasks


def run(embedder, data: str | Path, settings: tasks.Settings, *, query_embedder=None, split: str = "test",
        contextual: bool = False, cross_lingual: bool = False, sets: list[str] | None = None, pivot: str = "en",
        sample_corpus: int | None = None, query_filter: dict[str, Any] | None = None) -> list[dict]:
    """Result records of every task ``data`` supports (see :mod:`pplx_embed.eval.tasks`).

    ``data``: a BEIR directory (``contextual``: rows carry ``doc_id`` + ``chunk_index``), a folder of
    parallel BEIR sets (``cross_lingual`` adds the language grid and query-to-query from ``pivot``;
    ``sets`` keeps some), or an STS ``.tsv`` file or folder of them. ``query_filter`` keeps the
    queries whose fields equal the given values. Everything is loaded and checked (over-long texts,
    models, dimensions) before the first text is embedded.
    """
    data = Path(data)
    if not data.exists():
        raise InputError(f"data not found: {data}")
    if data.is_file() or not datasets.is_beir(data) and not datasets.parallel_sets(data):
        if contextual or cross_lingual or query_filter:
            raise InputError(f"{data}: --contextual, --cross-lingual and --query-filter need BEIR data")
        files = [data] if data.is_file() else sorted(data.glob(f"*{split}.tsv")) or sorted(data.glob("*.tsv"))
        if not files:
            raise InputError(f"{data}: not a BEIR directory (corpus.jsonl + queries.jsonl + qrels/), a folder of "
                             "BEIR sets, nor an STS .tsv file or folder of them")
        pairs = [datasets.load_sts(f) for f in files]
        tasks.check_inputs(embedder, pairs, settings)
        return [r for ds in pairs for r in tasks.sts(embedder, ds, settings)]
    if datasets.is_beir(data):
        if cross_lingual:
            raise InputError(f"{data} is one BEIR set: --cross-lingual needs a folder of parallel sets in at least "
                             "two languages (e.g. ../shared/data/xquad)")
        ds = datasets.load_beir(data, split, query_filter=query_filter)
        if sample_corpus:
            ds = datasets.sample_corpus(ds, sample_corpus)
        tasks.check_inputs(embedder, [ds], settings, query_embedder)
        if contextual:
            return tasks.contextual(embedder, ds, settings, query_embedder)
        return tasks.query_to_doc(embedder, ds, settings, query_embedder)
    if contextual:
        raise InputError(f"{data}: --contextual needs a BEIR directory whose corpus rows carry doc_id and chunk_index")
    parallel = datasets.parallel_sets(data)
    if sets:
        unknown = [name for name in sets if name not in parallel]
        if unknown:
            raise InputError(f"{data} has no set {unknown[0]!r}; it has {', '.join(parallel)}")
        parallel = {name: parallel[name] for name in sets}
    if cross_lingual and len(parallel) < 2:
        raise InputError(f"--cross-lingual needs at least two parallel sets (languages); {data} gives "
                         f"only {', '.join(parallel)}")
    loaded = {name: datasets.load_beir(path, split, f"{data.name}/{name}", query_filter)
              for name, path in parallel.items()}
    tasks.check_inputs(embedder, list(loaded.values()), settings, query_embedder)
    records = tasks.cross_lingual(embedder, loaded, settings, data.name, query_embedder, matrix=cross_lingual)
    if cross_lingual:
        start = pivot if pivot in loaded else next(iter(loaded))
        records += tasks.query_to_query(embedder, loaded, settings, data.name, start, query_embedder)
    return records


def write_report(records: list[dict], embedder, data: str | Path, out: str | Path, seconds: float,
                 settings: tasks.Settings, command: str | None = None, generator: str = "pplx-embed eval") -> Path:
    """``out/results.json`` (records + run metadata), ``out/report.md`` and its plots; returns the JSON path."""
    out = Path(out)
    cache = settings.cache
    meta = report.run_meta(embedder, command, seconds, data=str(data), cache={"hits": cache.hits,
                                                                              "misses": cache.misses})
    path = report.save(out / "results.json", [meta], records)
    report.render([meta], records, out, out / "report.md", title=f"Evaluation of {embedder.name} on {data}",
                  generator=generator)
    return path
