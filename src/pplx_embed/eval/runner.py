"""Run an evaluation on a data set and write its report: what ``pplx-embed eval`` and the demo call."""

from __future__ import annotations

from pathlib import Path

from pplx_embed.errors import InputError
from pplx_embed.eval import datasets, report, tasks


def run(embedder, data: str | Path, settings: tasks.Settings, *, query_embedder=None, split: str = "test",
        contextual: bool = False, cross_lingual: bool = False, sets: list[str] | None = None, pivot: str = "en",
        sample_corpus: int | None = None) -> list[dict]:
    """Result records of every task ``data`` supports (see :mod:`pplx_embed.eval.tasks`).

    ``data``: a BEIR directory (``contextual``: rows carry ``doc_id`` + ``chunk_index``), a folder of
    parallel BEIR sets (``cross_lingual`` adds the language grid and query-to-query from ``pivot``;
    ``sets`` keeps some), or an STS ``.tsv`` file or folder of them.
    """
    data = Path(data)
    if not data.exists():
        raise InputError(f"data not found: {data}")
    settings.dims(embedder.dimension)  # validate before any work
    if data.is_file():
        return tasks.sts(embedder, datasets.load_sts(data), settings)
    if datasets.is_beir(data):
        ds = datasets.load_beir(data, split)
        if sample_corpus:
            ds = datasets.sample_corpus(ds, sample_corpus)
        if contextual:
            return tasks.contextual(embedder, ds, settings, query_embedder)
        return tasks.query_to_doc(embedder, ds, settings, query_embedder)
    if contextual:
        raise InputError(f"{data}: --contextual needs a BEIR directory whose corpus rows carry doc_id and chunk_index")
    parallel = datasets.parallel_sets(data)
    if parallel and sets:
        unknown = [name for name in sets if name not in parallel]
        if unknown:
            raise InputError(f"{data} has no set {unknown[0]!r}; it has {', '.join(parallel)}")
        parallel = {name: parallel[name] for name in sets}
    if parallel:
        loaded = {name: datasets.load_beir(path, split, f"{data.name}/{name}") for name, path in parallel.items()}
        records = tasks.cross_lingual(embedder, loaded, settings, data.name, query_embedder, matrix=cross_lingual)
        if cross_lingual and len(loaded) > 1:
            start = pivot if pivot in loaded else next(iter(loaded))
            records += tasks.query_to_query(embedder, loaded, settings, data.name, start, query_embedder)
        return records
    sts_files = sorted(data.glob(f"*{split}.tsv")) or sorted(data.glob("*.tsv"))
    if sts_files:
        return [r for f in sts_files for r in tasks.sts(embedder, datasets.load_sts(f), settings)]
    raise InputError(f"{data}: not a BEIR directory (corpus.jsonl + queries.jsonl + qrels/), a folder of BEIR sets, "
                     "nor an STS .tsv file or folder of them")


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
