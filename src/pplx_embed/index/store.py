"""The ``VectorStore`` interface every index backend implements, and what they share.

A store holds, per item, an id, a text, JSON metadata, and (for contextual documents) the document
id and chunk position, plus the item's vector in two precisions: packed binary for the first search
stage (Hamming) and int8 for rescoring the first stage's candidates (cosine on unnormalized int8),
exactly as pplx-embed models emit them. Each store records the model, its Matryoshka dimensions and
its quantization, and refuses vectors or queries from another model.

A store may also record a *query model* of the same dimension (the model card's pairing: the
``pplx-embed-v1`` model for queries, ``pplx-embed-context-v1`` for document chunks); text queries are
then embedded with it. The backends live in their own modules and
:mod:`pplx_embed.index.locations` picks one by location; this module knows none of them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pplx_embed.checks.filters import check_filter
from pplx_embed.checks.items import check_ids, check_metadata
from pplx_embed.checks.precision import check_dimensions
from pplx_embed.checks.texts import check_documents, check_texts, check_unicode
from pplx_embed.errors import InputError
from pplx_embed.index.query import (
    MAX_CANDIDATES,
    SearchQuery,
    check_count,
    check_rescore,
    first_stage_size,
    stage,
    timed,
)
from pplx_embed.index.rescore import positions, rescore
from pplx_embed.model.checkpoint import recorded_name
from pplx_embed.model.quantization import to_binary, to_int8, truncate


class IndexNotFoundError(FileNotFoundError):
    """No index exists at the given location."""


class IndexDamagedError(InputError):
    """The stored index fails its integrity checks: a clear error instead of wrong answers."""


@dataclass
class Hit:
    """One search result: the item, its score (cosine of the rescoring precision) and where it came from."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata,
                "doc_id": self.doc_id, "position": self.position}


@dataclass
class Batch:
    """Validated items ready to store: ids, float vectors (or ``None``), int8 and packed binary codes."""

    ids: list[str]
    int8: np.ndarray
    binary: np.ndarray
    floats: np.ndarray | None
    texts: list[str | None]
    metadata: list[dict[str, Any]]
    doc_ids: list[str | None]
    positions: list[int | None]


def new_store_shape(model: str, dimensions: int | None, full_dimension: int | None) -> tuple[int, int]:
    """Validated ``(dimensions, full_dimension)`` of a new store: a named model, an MRL size, whole bytes of bits."""
    if not isinstance(model, str) or not model:
        raise InputError("model must be a non-empty name")
    if dimensions is None and full_dimension is None:
        raise InputError("give the index's dimensions (or the model's full dimension)")
    full = full_dimension if full_dimension is not None else dimensions
    if isinstance(full, bool) or not isinstance(full, int) or full < 8:
        raise InputError(f"the model's dimension must be an integer of at least 8, got {full!r}")
    return check_dimensions(dimensions, full, "binary"), full


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32 unit vectors (zero rows stay zero): cosine becomes an inner product."""
    rows = np.array(rows, dtype=np.float32, order="C")  # one copy, normalized in place (norm() would square a copy)
    rows /= np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)[:, None]
    return rows


class VectorStore(ABC):
    """An index of embedded items with a binary first stage and int8 (or float) rescoring.

    Subclasses implement the storage (``_write``, ``_delete``, ``_first_stage``, ``_fetch`` …);
    validation, embedding of texts, query quantization and rescoring live here, once.
    """

    model: str
    dimensions: int
    full_dimension: int
    contextual: bool
    store_float: bool
    query_model: str | None = None  # embeds text queries when set (else ``model``)
    scans = False  # implements _scan: exact search, and search below the stored dimensions

    def __init__(self, embedder=None):
        self._embedder = self._query_embedder = None
        self._pending = embedder

    def _remote_facts(self, facts: dict[str, Any]) -> None:
        """Take the facts a database-backed store keeps beside its rows, then check them (no float copies)."""
        self.model = facts["model"]
        self.dimensions = int(facts["dimensions"])
        self.full_dimension = int(facts["full_dimension"])
        self.contextual = bool(facts["contextual"])
        self.store_float = False
        self.query_model = facts.get("query_model")
        self._lock = threading.RLock()
        self._codes_cache: dict[str, np.ndarray] = {}
        self._check_model_args()

    def _check_model_args(self) -> None:
        if self.dimensions % 8:
            raise InputError(f"dimensions must be a multiple of 8 for binary codes, got {self.dimensions}")
        if self.full_dimension < self.dimensions:
            raise InputError(f"dimensions {self.dimensions} exceed the model's {self.full_dimension}")
        if self._pending is not None:
            self.use(self._pending)

    def info(self) -> dict[str, Any]:
        """What the store records about its vectors."""
        return {"model": self.model, "query_model": self.query_model or self.model, "dimensions": self.dimensions,
                "full_dimension": self.full_dimension,
                "quantization": ["binary", "int8"] + (["float"] if self.store_float else []),
                "contextual": self.contextual}

    # ---- the embedders ------------------------------------------------------------------------
    @property
    def embedder(self):
        """The index's model (loaded on first use when none was given)."""
        if self._embedder is None:
            from pplx_embed.embedder import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    @property
    def query_embedder(self):
        """The model that embeds text queries: the recorded query model (loaded on first use), else the index's."""
        if self.query_model is None:
            return self.embedder
        if self._query_embedder is None:
            from pplx_embed.embedder import Embedder

            self.use(Embedder(self.query_model))
        return self._query_embedder

    def use(self, embedder) -> None:
        """Embed with ``embedder``: the index's model (documents, and queries unless a query model is
        recorded) or its query model (queries); any other model is refused."""
        name, (model, query_model) = recorded_name(embedder.name), self._recorded_names()
        if name not in (model, query_model):
            paired = f" and queries of {self.query_model!r}" if self.query_model else ""
            raise InputError(f"this index holds vectors of {self.model!r}{paired}; "
                             f"it cannot use the embedder of {embedder.name!r}")
        if name == query_model:
            if getattr(embedder, "dimension", self.full_dimension) != self.full_dimension:
                raise InputError(f"query model {embedder.name!r} embeds {embedder.dimension} dimensions; "
                                 f"the index's model has {self.full_dimension}")
            self._query_embedder = embedder
        if name == model:
            self._embedder = embedder

    def _recorded_names(self) -> tuple[str, str | None]:
        """The index's model and query model (None) as recorded names: an alias counts as its hub id."""
        return recorded_name(self.model), self.query_model and recorded_name(self.query_model)

    def _check_model(self, model: str | None, query: bool = False) -> None:
        """Vectors said to be of ``model`` must be of this index's model (or its query model, for queries)."""
        ours, query_model = self._recorded_names()
        model = model if model is None else recorded_name(model)
        if model is not None and model != ours and not (query and query_model and model == query_model):
            what = "query" if query else "go into"
            raise InputError(f"vectors of model {model!r} cannot {what} an index of {self.model!r}"
                             + (f" (queries: {self.query_model!r})" if self.query_model else ""))

    # ---- input validation ---------------------------------------------------------------------
    def _vectors(self, vectors: Any, what: str = "vectors") -> tuple[np.ndarray, np.ndarray | None]:
        """(int8, float or None) at the index dimensions from float or int8 input of dims or full dims."""
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"{what} must be a non-empty [n, dim] array, got shape {x.shape}")
        if x.shape[1] not in (self.dimensions, self.full_dimension):
            raise InputError(f"{what} have {x.shape[1]} dimensions; this index ({self.model}) takes "
                             f"{self.dimensions}" + (f" or {self.full_dimension}" if self.full_dimension
                                                     != self.dimensions else ""))
        x = truncate(x, self.dimensions)
        if x.dtype == np.int8:
            if self.store_float:
                raise InputError("this index stores float vectors for rescoring; pass float vectors, not int8")
            return np.ascontiguousarray(x), None
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"{what} must be float or int8 arrays, got {x.dtype}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise InputError(f"{what} contain NaN or infinite values")
        return to_int8(x), x

    def _items(self, ids: Any, texts: Any, metadata: Any) -> tuple[list[str], list[str | None], list[dict]]:
        """A batch's ids, texts (strings or None) and metadata, checked before anything is embedded."""
        ids = check_ids(ids)
        n = len(ids)
        if n == 0:
            raise InputError("nothing to add: ids is empty")
        if texts is None:
            texts = [None] * n
        elif isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise InputError("texts must be a list of strings")
        for i, text in enumerate(texts):
            if text is not None and not isinstance(text, str):
                raise InputError(f"text {i} must be a string (or None), got {type(text).__name__}")
            if text is not None:
                check_unicode(text, f"text {i}")
        if metadata is not None and (isinstance(metadata, dict) or not isinstance(metadata, (list, tuple))):
            raise InputError("metadata must be a list with one object (or null) per item")
        metadata = [check_metadata(m) for m in metadata] if metadata is not None else [{}] * n
        for name, values in (("texts", texts), ("metadata", metadata)):
            if len(values) != n:
                raise InputError(f"{n} ids but {len(values)} {name}")
        return ids, list(texts), metadata

    def _stored(self) -> tuple[str, ...]:
        """The precisions each item keeps (what :meth:`Embedder.encode_all` computes for it)."""
        return ("int8", "binary", "float") if self.store_float else ("int8", "binary")

    def _batch(self, ids: list[str], texts: list, metadata: list[dict], int8: np.ndarray, binary: np.ndarray,
               floats: np.ndarray | None, doc_ids=None, positions=None) -> Batch:
        n = len(ids)
        if int8.shape[0] != n:
            raise InputError(f"{n} ids but {int8.shape[0]} vectors")
        return Batch(ids, int8, binary, floats if self.store_float else None, texts, metadata,
                     list(doc_ids) if doc_ids is not None else [None] * n,
                     list(positions) if positions is not None else [None] * n)

    def _binary_codes(self, binary: Any, n: int) -> np.ndarray:
        """Packed binary codes of dims/8 (or full dims/8, truncated) bytes per row, MSB first."""
        b = np.asarray(binary)
        widths = {self.dimensions // 8, self.full_dimension // 8}
        if b.dtype != np.uint8 or b.ndim != 2 or b.shape[0] != n or b.shape[1] not in widths:
            raise InputError(f"binary codes must be uint8 [{n}, {self.dimensions // 8}] (packed bits of "
                             f"{self.dimensions} dimensions), got {b.dtype} {list(b.shape)}")
        return np.ascontiguousarray(b[:, : self.dimensions // 8])  # MSB-first: the first dims' bits

    # ---- writing ------------------------------------------------------------------------------
    def upsert_codes(self, ids: Sequence[str], int8: np.ndarray, binary: np.ndarray, *,
                     texts: Sequence[str | None] | None = None, metadata: Sequence[dict | None] | None = None,
                     model: str | None = None) -> int:
        """Store precomputed int8 and packed binary codes (e.g. ``pplx-embed batch`` parts), replacing same ids.

        Both must come from this index's model (``model`` is checked when given). Atomic per call.
        """
        self._check_model(model)
        if self.store_float:
            raise InputError("this index keeps float vectors for rescoring; add float vectors with upsert(vectors=...)")
        ids, texts, metadata = self._items(ids, texts, metadata)
        int8 = np.asarray(int8)
        if int8.dtype != np.int8:
            raise InputError(f"int8 codes must be an int8 array, got {int8.dtype}")
        int8, _ = self._vectors(int8)
        batch = self._batch(ids, texts, metadata, int8, self._binary_codes(binary, len(ids)), None)
        self._write(batch, replace=True)
        return len(batch.ids)

    def add(self, texts: Sequence[str] | None = None, *, ids: Sequence[str], vectors: Any = None,
            metadata: Sequence[dict | None] | None = None, model: str | None = None,
            show_progress_bar: bool = False, truncation: str | None = None) -> int:
        """Add new items (texts are embedded with the index's model unless ``vectors`` are given).

        ``vectors`` are float vectors of this model (``Embedder.pooled``, or ``encode``'s float output: the
        int8 codes are derived from them) or its int8 codes. Atomic: the whole batch is stored, or nothing
        (an id already present is an error). ``truncation`` (``right``/``left``) shortens over-long texts
        instead of refusing them.
        """
        return self._add(texts, ids, vectors, metadata, model, show_progress_bar, truncation, replace=False)

    def upsert(self, texts: Sequence[str] | None = None, *, ids: Sequence[str], vectors: Any = None,
               metadata: Sequence[dict | None] | None = None, model: str | None = None,
               show_progress_bar: bool = False, truncation: str | None = None) -> int:
        """Add items, replacing any with the same id. Atomic per call."""
        return self._add(texts, ids, vectors, metadata, model, show_progress_bar, truncation, replace=True)

    def _add(self, texts, ids, vectors, metadata, model, show_progress_bar, truncation, replace: bool) -> int:
        self._check_model(model)
        if vectors is None:
            if texts is None:
                raise InputError("give texts to embed, or vectors")
            texts = check_texts(texts)
        ids, texts, metadata = self._items(ids, texts, metadata)
        if vectors is None:
            out = self.embedder.encode_all(texts, self._stored(), self.dimensions,
                                           show_progress_bar=show_progress_bar, truncation=truncation)
            int8, binary, floats = out["int8"], out["binary"], out.get("float")
        else:
            int8, floats = self._vectors(vectors)
            binary = to_binary(floats if floats is not None else int8.astype(np.float32))
        self._write(self._batch(ids, texts, metadata, int8, binary, floats), replace)
        return len(ids)

    def add_documents(self, documents: Sequence[Sequence[str]], doc_ids: Sequence[str], *,
                      metadata: Sequence[dict | None] | None = None, replace: bool = True,
                      show_progress_bar: bool = False, truncation: str | None = None) -> int:
        """Index each document's chunks with late chunking (``encode_contextual``); a contextual index only.

        Chunk ids are ``"{doc_id}#{position}"``; search hits carry ``doc_id`` and ``position``.
        Document metadata is copied to each of its chunks. Re-adding a document replaces its chunks.
        """
        if not self.contextual:
            raise InputError(f"this index holds independent texts of {self.model!r}, not late-chunked documents; "
                             "add texts with ids, or create a contextual index (--contextual)")
        documents = check_documents(documents, required=True)
        doc_ids = check_ids(doc_ids, "doc_ids")
        if len(doc_ids) != len(documents):
            raise InputError(f"{len(documents)} documents but {len(doc_ids)} doc_ids")
        if metadata is None:
            metadata = [None] * len(doc_ids)
        if isinstance(metadata, dict) or not isinstance(metadata, (list, tuple)) or len(metadata) != len(doc_ids):
            raise InputError(f"metadata must be a list with one object (or null) per document ({len(doc_ids)})")
        ids, texts, metas, docs, places = [], [], [], [], []
        for doc_id, chunks, meta in zip(doc_ids, documents, metadata):
            for position, chunk in enumerate(chunks):
                ids.append(f"{doc_id}#{position}")
                texts.append(chunk)
                metas.append(meta)
                docs.append(doc_id)
                places.append(position)
        ids, texts, metas = self._items(ids, texts, metas)
        out = self.embedder.encode_contextual_all(documents, self._stored(), self.dimensions,
                                                  show_progress_bar=show_progress_bar, truncation=truncation)
        batch = self._batch(ids, texts, metas, *(np.concatenate(out[p]) for p in ("int8", "binary")),
                            np.concatenate(out["float"]) if "float" in out else None, docs, places)
        if replace:
            self._delete_documents(doc_ids)
        self._write(batch, replace)
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove items by id; returns how many existed."""
        return self._delete(check_ids([ids] if isinstance(ids, str) else ids))

    # ---- searching ----------------------------------------------------------------------------
    def embed_queries(self, queries: Any) -> np.ndarray:
        """Query texts → raw pooled vectors at the index dimensions: by the query model when one is recorded,
        else by the index's model (as ``[[query]]``, a one-chunk document, for a contextual index)."""
        queries = check_texts(queries, what="query", required=True)
        if self.query_model is not None:
            return self.query_embedder.encode_all(queries, ("pooled",), self.dimensions)["pooled"]
        if self.contextual:
            return np.concatenate(self.embedder.encode_contextual_all([[q] for q in queries], ("pooled",),
                                                                      self.dimensions)["pooled"])
        return self.embedder.encode_all(queries, ("pooled",), self.dimensions)["pooled"]

    def search(self, query: str | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
               candidates: int | None = None, rescore: str = "int8", model: str | None = None,
               dimensions: int | None = None, exact: bool = False,
               timings: dict[str, float] | None = None) -> list[Hit]:
        """The ``k`` best items for one query (text, or a float / int8 vector of this model)."""
        if not isinstance(query, str):
            query = np.asarray(query)
            if query.ndim != 1:
                raise InputError(f"a query vector must be 1-D, got shape {query.shape}; use search_many for several")
            query = query[None, :]
        else:
            query = [query]
        return self.search_many(query, k, filter=filter, candidates=candidates, rescore=rescore, model=model,
                                dimensions=dimensions, exact=exact, timings=timings)[0]

    def search_many(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
                    candidates: int | None = None, rescore: str = "int8", model: str | None = None,
                    dimensions: int | None = None, exact: bool = False,
                    timings: dict[str, float] | None = None) -> list[list[Hit]]:
        """Search several queries: binary first stage for ``candidates`` per query, then rescoring.

        ``rescore`` is ``int8`` (cosine on int8, default), ``float`` (needs ``store_float``) or
        ``none`` (Hamming order, score = 1 - 2·hamming/dims). ``filter`` keeps items whose metadata
        equals every given key/value. ``dimensions`` searches the first ``dimensions`` of the stored
        vectors (Matryoshka: a multiple of 8 the model allows, at most the index's). ``exact`` skips the
        first stage and scores every item that passes the filter at the ``rescore`` precision: the
        reference a search's recall is measured against. ``timings``, a dict, receives the seconds of
        each of :data:`~pplx_embed.index.query.STAGES` (an exact scan counts as the first stage).
        """
        with timed(timings):
            return self.run(self.query(queries, k, filter=filter, candidates=candidates, rescore=rescore,
                                       model=model, dimensions=dimensions, exact=exact))

    def search_rows(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
                    candidates: int | None = None, rescore: str = "int8", model: str | None = None,
                    dimensions: int | None = None,
                    exact: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Like :meth:`search_many` but returns backend row keys and scores (no item lookup)."""
        query = self.query(queries, k, filter=filter, candidates=candidates, rescore=rescore, model=model,
                           dimensions=dimensions, exact=exact)
        with self._reading():
            return self._search(query)

    def query(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
              candidates: int | None = None, rescore: str = "int8", model: str | None = None,
              dimensions: int | None = None, exact: bool = False) -> SearchQuery:
        """Check a search's arguments and embed its text queries → the :class:`SearchQuery` :meth:`run` takes."""
        k = check_count("k", k)
        candidates = check_count("candidates", candidates)
        rescore = check_rescore(rescore, self.store_float)
        where = check_filter(filter)
        if not isinstance(exact, bool):
            raise InputError(f"exact must be true or false, got {str(exact)[:40]!r}")
        width = self._search_width(dimensions)
        if isinstance(queries, str):
            raise InputError("search_many takes a list of queries; use search for one")
        if isinstance(queries, np.ndarray):
            self._check_model(model, query=True)
            int8, floats = self._vectors(queries, "query vectors")
            if rescore == "float" and floats is None:
                raise InputError("float rescoring needs float query vectors")
        else:
            with stage("embed"):
                embedded = self.embed_queries(queries)
            int8, floats = self._vectors(embedded, "query vectors")
        int8, floats = int8[:, :width], None if floats is None else floats[:, :width]
        binary = to_binary(floats if floats is not None else int8.astype(np.float32))
        # int8 rescoring compares the stored int8 codes with the query's code before rounding
        # (tanh(x)·127 up to scale) when the query is float: same transform, no query rounding error
        dense = np.tanh(floats) if floats is not None else int8
        return SearchQuery(binary, dense, floats, k, first_stage_size(k, candidates), where, rescore, exact)

    def _search_width(self, dimensions: Any) -> int:
        """The searched width: the index's dimensions, or fewer (Matryoshka) where the store scans."""
        if dimensions is None:
            return self.dimensions
        width = check_dimensions(dimensions, self.full_dimension, "binary")
        if width > self.dimensions:
            raise InputError(f"dimensions must be at most this index's {self.dimensions}, got {width}")
        return width

    def run(self, query: SearchQuery) -> list[list[Hit]]:
        """The hits of a :class:`SearchQuery`, all stages on one consistent view of the store."""
        with self._reading():
            rows, scores = self._search(query)
            with stage("fetch"):
                return self._fetch_many(rows, scores)

    def _search(self, query: SearchQuery) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """First stage then :meth:`_rescore` → each query's row keys and scores; a scan where the first stage
        cannot answer (exact, or below the index's width)."""
        if query.exact or query.width < self.dimensions:
            return self._search_scan(query)
        with stage("first_stage"):
            first = self._first_stage(query.binary, query.dense, query.candidates, query.where)
        with stage("rescore"):
            return self._rescore(query, first)

    def _search_scan(self, query: SearchQuery) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every item at the ``rescore`` precision (``exact``), or Hamming candidates of the truncated bits
        rescored, by the backend's scan."""
        if query.exact:
            precision, vectors = {"none": ("binary", query.binary), "int8": ("int8", query.dense),
                                  "float": ("float", query.floats)}[query.rescore]
            with stage("first_stage"):
                return self._scan(vectors, precision, query.k, query.where)
        with stage("first_stage"):
            first = self._scan(query.binary, "binary", query.candidates, query.where)[0]
        with stage("rescore"):
            return self._rescore(query, first)

    def _rescore(self, query: SearchQuery, first) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The first stage's candidates → :func:`~pplx_embed.index.rescore.rescore` → row keys and scores."""
        rows, keys = positions(first)
        if keys is None:
            return rescore(query, rows, self._gather, self._inv_norms())
        top, scores = rescore(query, rows, lambda at, precision: self._codes(keys[at], precision))
        return [keys[t] for t in top], scores

    def _gather(self, rows: np.ndarray, precision: str) -> np.ndarray:
        """The stored ``precision`` vectors of row numbers (stores that number rows override it)."""
        return self._codes(rows, precision)

    def _inv_norms(self):
        """A function giving stored int8 rows' inverse norms where the store keeps them, else None."""
        return None

    def items(self, ids: Sequence[str]) -> list[Hit]:
        """The stored items of ``ids`` that exist, in the order asked (``score`` is 0.0: no query)."""
        if isinstance(ids, (list, tuple)) and all(isinstance(i, str) for i in ids):
            ids = list(dict.fromkeys(ids))  # asked twice, answered once
        ids = check_ids(ids)
        if len(ids) > MAX_CANDIDATES:
            raise InputError(f"at most {MAX_CANDIDATES} ids at once, got {len(ids)}")
        if not ids:
            return []
        with self._reading():
            rows = self._rows_of_ids(ids)
            found = {hit.id: hit for hit in self._fetch(rows, np.zeros(len(rows), np.float32))}
        return [found[i] for i in ids if i in found]

    # ---- backend ------------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold a consistent view of the store across the stages of a search."""
        yield

    @abstractmethod
    def _write(self, batch: Batch, replace: bool) -> None:
        """Store a batch atomically; ``replace`` overwrites existing ids, else they are an error."""

    @abstractmethod
    def _delete(self, ids: list[str]) -> int: ...

    @abstractmethod
    def _delete_documents(self, doc_ids: list[str]) -> int: ...

    @abstractmethod
    def _first_stage(self, binary: np.ndarray, dense: np.ndarray, n: int, where: dict[str, Any]) -> list[np.ndarray]:
        """Per query, the row keys of the ``n`` nearest live items by Hamming that pass ``where``.

        ``dense`` holds the queries' rescoring vectors (``tanh`` of float, or int8), for backends that
        partition by cosine.
        """

    def _scan(self, queries: np.ndarray, precision: str, n: int,
              where: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query, the ``n`` best live items passing ``where`` of all, scored at ``precision`` on the first
        ``queries.shape[1]`` dimensions (bytes for ``binary``) → (row keys, scores), best first."""
        raise InputError(f"exact search and search below the stored dimensions need the embedded index; "
                         f"this index is kept in {type(self).__name__}")

    def _rows_of_ids(self, ids: list[str]) -> np.ndarray:
        """Row keys of the items ``ids`` (a backend keyed by id uses the ids; absent ones are skipped later)."""
        return np.array(ids, dtype=object)

    @abstractmethod
    def _codes(self, rows: np.ndarray, precision: str) -> np.ndarray:
        """The stored ``binary`` / ``int8`` / ``float`` vectors of ``rows``."""

    @abstractmethod
    def _fetch(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits (id, text, metadata …) for row keys in order."""

    def _fetch_many(self, rows: list[np.ndarray], scores: list[np.ndarray]) -> list[list[Hit]]:
        return [self._fetch(r, s) for r, s in zip(rows, scores)]

    def check(self) -> dict[str, Any]:
        """Verify the stored index (a database backend's integrity is the database's own)."""
        return {"ok": True, "items": len(self), "verified_by": "the database"}

    @property
    def needs_compaction(self) -> bool:
        """Whether :meth:`compact` has a first stage to build or train (the CLI and batch jobs compact then)."""
        return False

    def compact(self) -> int:
        """Build the first stage the stored rows call for and drop deleted rows; returns the rows dropped (a
        database reclaims deleted rows itself: 0)."""
        return 0

    @abstractmethod
    def stats(self) -> dict[str, Any]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
