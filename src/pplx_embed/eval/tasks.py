"""Evaluation tasks. Each returns result records (plain dicts, one per setting) for ``report``.

* ``query_to_doc``   – BEIR retrieval, at every precision × Matryoshka dimension.
* ``contextual``     – chunk retrieval with chunks embedded independently vs late-chunked
  (``encode_contextual`` over each whole document), same queries.
* ``cross_lingual``  – parallel sets (XQuAD): queries of language X against the corpus of Y.
* ``query_to_query`` – parallel query sets: a query retrieves its own translation.
* ``sts``            – Spearman correlation of pair similarity with gold scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr

from pplx_embed.checks.precision import check_dimensions
from pplx_embed.errors import InputError
from pplx_embed.eval.cache import EmbeddingCache
from pplx_embed.eval.datasets import RetrievalSet, STSSet
from pplx_embed.eval.metrics import evaluate
from pplx_embed.eval.retrieval import DEFAULT_RESCORE, PRECISIONS, Embeddings, bytes_per_vector, search, to_run
from pplx_embed.model.quantization import quantize, similarity


@dataclass
class Settings:
    """What to measure and how to embed."""

    precisions: tuple[str, ...] = PRECISIONS
    dimensions: tuple[int | None, ...] = (None,)  # None = the model's full dimension
    truncation: str | None = None
    rescore: int = DEFAULT_RESCORE
    k: int = 1000
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(None))
    show_progress_bar: bool = False

    @property
    def needs_int8(self) -> bool:
        return any(p in ("int8", "binary+rescore") for p in self.precisions)

    def __post_init__(self) -> None:
        for p in self.precisions:
            if p not in PRECISIONS:
                raise InputError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")

    def dims(self, full: int) -> list[int]:
        """The requested dimensions for a model of ``full`` dimensions, validated, ascending."""
        packed = "binary" if any(p.startswith("binary") for p in self.precisions) else None
        return sorted({check_dimensions(d, full, packed) for d in self.dimensions})


def _check_pair(embedder, query_embedder) -> None:
    if query_embedder is not None and query_embedder.dimension != embedder.dimension:
        raise InputError(f"query model {query_embedder.name} has {query_embedder.dimension} dimensions but "
                         f"document model {embedder.name} has {embedder.dimension}; they must match")


def _check_fit(embedder, texts: list[str], s: Settings, what: str = "texts") -> None:
    if s.truncation is None and (over := _over_limit(embedder, texts)):
        raise InputError(f"{over} of {len(texts)} {what} are longer than {embedder.name}'s {embedder.max_length}-token "
                         "context; pass truncation='right' (CLI: --truncation right) to cut them")


def check_inputs(embedder, sets: list[RetrievalSet | STSSet], s: Settings, query_embedder=None) -> None:
    """Refuse what a task would refuse (mismatched models, over-long texts unless truncating), for every
    set at once, before anything is embedded."""
    _check_pair(embedder, query_embedder)
    s.dims(embedder.dimension)
    for ds in sets:
        if isinstance(ds, STSSet):
            _check_fit(embedder, ds.sentences1 + ds.sentences2, s, f"{ds.name} sentences")
        else:
            _check_fit(query_embedder or embedder, ds.query_texts, s, f"{ds.name} queries")
            _check_fit(embedder, ds.corpus_texts, s, f"{ds.name} corpus rows")


def embed_texts(embedder, texts: list[str], s: Settings) -> Embeddings:
    """Every precision of ``texts`` from one cached forward pass (see ``EmbeddingCache.pooled``)."""
    _check_fit(embedder, texts, s)
    pooled = s.cache.pooled(embedder, texts, s.truncation, s.show_progress_bar)
    return Embeddings(pooled, quantize(pooled, "int8"))


def embed_documents(embedder, documents: list[list[str]], s: Settings) -> Embeddings:
    """Late-chunked embeddings of every chunk, documents and chunks in order (through the cache).

    A model with a Normalize module scales its float output, while int8 is tanh of the
    *unnormalized* pooled vector, so such a model needs a second, int8 pass (run only when an
    int8 view is asked for).
    """
    _check_fit(embedder, [chunk for doc in documents for chunk in doc], s)

    def run(quantization: str) -> np.ndarray:
        return np.concatenate(s.cache.encode_contextual(embedder, documents, quantization, s.truncation,
                                                        s.show_progress_bar))

    f = run("float")
    if embedder.checkpoint.normalize:
        return Embeddings(f, run("int8") if s.needs_int8 else None)
    return Embeddings(f, quantize(f, "int8"))


def _over_limit(embedder, texts: list[str]) -> int:
    return int(sum(n > embedder.max_length for n in embedder.count_tokens(texts)))


def _retrieve(queries: Embeddings, docs: Embeddings, ds: RetrievalSet, doc_ids: list[str], full: int,
              s: Settings, base: dict, precisions=None, dims=None) -> list[dict]:
    rows = []
    for precision in precisions or s.precisions:
        for d in dims or s.dims(full):
            ranked = search(queries, docs, precision, d, s.k, s.rescore)
            metrics = evaluate(ds.qrels, to_run(ranked, ds.query_ids, doc_ids))
            rows.append({**base, "precision": precision, "dimensions": d,
                         "bytes": bytes_per_vector(precision, d), "metrics": metrics})
    return rows


def _base(task: str, dataset: str, embedder, query_embedder, s: Settings, **extra) -> dict:
    return {"task": task, "dataset": dataset, "model": embedder.name,
            "query_model": (query_embedder or embedder).name, "truncation": s.truncation, **extra}


def query_to_doc(embedder, ds: RetrievalSet, s: Settings, query_embedder=None) -> list[dict]:
    """Retrieval of corpus rows for each query at every precision × dimension."""
    _check_pair(embedder, query_embedder)
    qe = query_embedder or embedder
    queries, docs = embed_texts(qe, ds.query_texts, s), embed_texts(embedder, ds.corpus_texts, s)
    base = _base("retrieval", ds.name, embedder, query_embedder, s, queries=len(ds.query_ids),
                 corpus=len(ds.corpus_ids), corpus_sampled_from=ds.sampled_from,
                 over_limit={"queries": _over_limit(qe, ds.query_texts),
                             "corpus": _over_limit(embedder, ds.corpus_texts)})
    return _retrieve(queries, docs, ds, ds.corpus_ids, embedder.dimension, s, base)


def contextual(embedder, ds: RetrievalSet, s: Settings, query_embedder=None) -> list[dict]:
    """Chunk retrieval twice: chunks embedded one by one (``independent``) and late-chunked (``late``).

    Without a separate query model, queries go through the same path as the chunks: plain
    ``encode`` for independent, ``encode_contextual([[query]])`` for late chunking.
    """
    if not ds.contextual:
        raise InputError(f"{ds.name} is not a contextual set: its corpus rows need doc_id and chunk_index")
    _check_pair(embedder, query_embedder)
    order = [row for _, rows in ds.documents for row in rows]
    doc_ids = [ds.corpus_ids[r] for r in order]
    texts = [ds.corpus_texts[r] for r in order]
    documents = [[ds.corpus_texts[r] for r in rows] for _, rows in ds.documents]
    over = {"queries": _over_limit(query_embedder or embedder, ds.query_texts),
            "corpus": _over_limit(embedder, texts)}
    if query_embedder is not None:
        q_plain = q_late = embed_texts(query_embedder, ds.query_texts, s)
    else:
        q_plain = embed_texts(embedder, ds.query_texts, s)
        q_late = embed_documents(embedder, [[q] for q in ds.query_texts], s)
    out = []
    for mode, queries, docs in (("independent", q_plain, embed_texts(embedder, texts, s)),
                                ("late", q_late, embed_documents(embedder, documents, s))):
        base = _base("contextual", ds.name, embedder, query_embedder, s, mode=mode, queries=len(ds.query_ids),
                     corpus=len(doc_ids), documents=len(documents), over_limit=over)
        out += _retrieve(queries, docs, ds, doc_ids, embedder.dimension, s, base)
    return out


def cross_lingual(embedder, sets: dict[str, RetrievalSet], s: Settings, group: str,
                  query_embedder=None, matrix: bool = True) -> list[dict]:
    """Every language on its own at every setting (task ``retrieval``), then, with ``matrix``, every
    query language against every other corpus language at the first precision and largest
    dimension (task ``cross-lingual``). The sets must share corpus ids and qrels (parallel data)."""
    _check_pair(embedder, query_embedder)
    qe = query_embedder or embedder
    langs = list(sets)
    ref = sets[langs[0]]
    for lang in langs[1:]:
        if set(sets[lang].corpus_ids) != set(ref.corpus_ids) or sets[lang].qrels != ref.qrels:
            raise InputError(f"{group}/{lang} and {group}/{langs[0]} are not parallel: corpus ids or qrels differ")
    queries = {lang: embed_texts(qe, sets[lang].query_texts, s) for lang in langs}
    corpora = {lang: embed_texts(embedder, sets[lang].corpus_texts, s) for lang in langs}
    out = []
    for lang in langs:
        ds = sets[lang]
        base = _base("retrieval", f"{group}/{lang}", embedder, query_embedder, s, language=lang,
                     queries=len(ds.query_ids), corpus=len(ds.corpus_ids),
                     over_limit={"queries": _over_limit(qe, ds.query_texts),
                                 "corpus": _over_limit(embedder, ds.corpus_texts)})
        out += _retrieve(queries[lang], corpora[lang], ds, ds.corpus_ids, embedder.dimension, s, base)
    precision, dims = s.precisions[0], s.dims(embedder.dimension)[-1]
    for ql in langs if matrix else []:
        for cl in langs:
            if ql == cl:
                continue
            ds = sets[ql]
            docs_ids = sets[cl].corpus_ids
            base = _base("cross-lingual", f"{group}/{ql}->{cl}", embedder, query_embedder, s,
                         query_language=ql, corpus_language=cl, queries=len(ds.query_ids), corpus=len(docs_ids))
            out += _retrieve(queries[ql], corpora[cl], ds, docs_ids, embedder.dimension, s, base, [precision], [dims])
    return out


def query_to_query(embedder, sets: dict[str, RetrievalSet], s: Settings, group: str, pivot: str,
                   query_embedder=None) -> list[dict]:
    """Queries of ``pivot`` retrieve among the queries of each other language; the relevant one is the
    query with the same id (its translation). First precision, largest dimension. Both sides are
    queries, so the query model embeds them when one is given."""
    if pivot not in sets:
        raise InputError(f"pivot language {pivot!r} not among {', '.join(sets)}")
    qe = query_embedder or embedder
    src = sets[pivot]
    queries = {lang: embed_texts(qe, ds.query_texts, s) for lang, ds in sets.items()}
    precision, dims = s.precisions[0], s.dims(qe.dimension)[-1]
    out = []
    for lang, ds in sets.items():
        if lang == pivot:
            continue
        targets = set(ds.query_ids)
        pairs = RetrievalSet(f"{group}/{pivot}->{lang}", ds.query_ids, ds.query_texts, src.query_ids,
                             src.query_texts, {q: {q: 1} for q in src.query_ids if q in targets})
        base = _base("query-to-query", pairs.name, qe, None, s, query_language=pivot, corpus_language=lang,
                     queries=len(src.query_ids), corpus=len(ds.query_ids))
        out += _retrieve(queries[pivot], queries[lang], pairs, ds.query_ids, qe.dimension, s, base,
                         [precision], [dims])
    return out


def sts(embedder, ds: STSSet, s: Settings) -> list[dict]:
    """Spearman correlation (×100) of each pair's similarity with the gold score, per setting.

    ``binary+rescore`` is a search strategy, not a pair score, so it is skipped here.
    """
    n = len(ds.scores)
    both = embed_texts(embedder, ds.sentences1 + ds.sentences2, s)
    base = _base("sts", ds.name, embedder, None, s, pairs=n,
                 over_limit={"sentences": _over_limit(embedder, ds.sentences1 + ds.sentences2)})
    out = []
    for precision in s.precisions:
        if precision == "binary+rescore":
            continue
        for d in s.dims(embedder.dimension):
            v = both.view(precision, d)
            sims = np.concatenate([np.diag(similarity(v[i : i + 256], v[n + i : n + i + 256]))
                                   for i in range(0, n, 256)])
            rho = spearmanr(sims, ds.scores).statistic
            out.append({**base, "precision": precision, "dimensions": d, "bytes": bytes_per_vector(precision, d),
                        "metrics": {"spearman": 100.0 * float(rho)}})
    return out
