"""The ``VectorStore`` interface every index backend implements, and what they share.

A store holds, per item, an id, a text, JSON metadata, and (for contextual documents) the document
id and chunk position, plus the item's vector in two precisions: packed binary for the first search
stage (Hamming) and int8 for rescoring the first stage's candidates (cosine on unnormalized int8),
exactly as pplx-embed models emit them. Each store records the model, its Matryoshka dimensions and
its quantization, and refuses vectors or queries from another model.

Backends: :class:`~pplx_embed.index.embedded.EmbeddedIndex` (a directory: memory-mapped vectors +
SQLite) and :class:`~pplx_embed.index.milvus.MilvusStore` (Milvus / Milvus Lite). Switching is
configuration: :meth:`VectorStore.open` and :meth:`VectorStore.create` pick the backend from the
location (``milvus://host:port/collection``, ``milvus:path/to/lite.db#collection``, else a
directory).
"""

from __future__ import annotations

import os

import re
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from pplx_embed.model.quantization import check_dimensions, hamming_distance, to_binary, to_int8, truncate

RESCORE_MODES = ("int8", "float", "none")
PG_PREFIXES = ("postgresql://", "postgres://", "pgserver:")  # locations of the pgvector backend
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class IndexNotFoundError(FileNotFoundError):
    """No index exists at the given location."""


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
        raise ValueError("model must be a non-empty name")
    dimensions = dimensions or full_dimension
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 8:
        raise ValueError(f"dimensions must be a positive multiple of 8, got {dimensions!r}")
    full_dimension = full_dimension or dimensions
    check_dimensions(dimensions, full_dimension)
    if dimensions % 8:
        raise ValueError(f"dimensions must be a multiple of 8 for binary codes, got {dimensions}")
    return dimensions, full_dimension


def check_filter(where: dict[str, Any] | None) -> dict[str, Any]:
    """Validate an equality filter on metadata: ``{"key": value}`` with scalar JSON values."""
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise TypeError(f"filter must be a dict of metadata key -> value, got {type(where).__name__}")
    for key, value in where.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"filter key {key!r} is not a valid metadata key (letters, digits, _ . -)")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"filter value for {key!r} must be a string, number, boolean or null")
    return where


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32 unit vectors (zero rows stay zero): cosine becomes an inner product."""
    rows = np.asarray(rows, dtype=np.float32)
    return np.ascontiguousarray(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12))


def rescore_top(queries: np.ndarray, candidates: list[np.ndarray], codes: np.ndarray,
                k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query, its ``candidates`` reordered by cosine to it, top ``k`` → (rows, scores).

    ``codes`` holds the candidates' vectors one query after another (one gather for all queries).
    """
    codes, queries = unit_rows(codes), unit_rows(queries)
    owner = np.repeat(np.arange(len(candidates)), [len(c) for c in candidates])
    scores = np.einsum("ij,ij->i", codes, queries[owner])
    rows, out, start = [], [], 0
    for cand in candidates:
        mine = scores[start : start + len(cand)]
        start += len(cand)
        top = np.argsort(-mine, kind="stable")[:k]
        rows.append(cand[top])
        out.append(mine[top])
    return rows, out


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

    def __init__(self, embedder=None):
        self._embedder = embedder

    # ---- opening ------------------------------------------------------------------------------
    @staticmethod
    def create(location: str | os.PathLike, model: str, dimensions: int | None = None, *, full_dimension: int | None = None,
               store_float: bool = False, contextual: bool = False, embedder=None, **options) -> VectorStore:
        """Create a new, empty store at ``location`` for vectors of ``model`` at ``dimensions``."""
        from pplx_embed.index.embedded import EmbeddedIndex

        if embedder is not None:
            if embedder.name != model:
                raise ValueError(f"embedder is {embedder.name!r} but the index is for {model!r}")
            full_dimension = full_dimension or embedder.dimension
        kwargs = dict(full_dimension=full_dimension, store_float=store_float, contextual=contextual,
                      embedder=embedder, **options)
        if str(location).startswith("milvus:"):
            from pplx_embed.index.milvus import MilvusStore

            return MilvusStore.create(location, model, dimensions, **kwargs)
        if str(location).startswith(PG_PREFIXES):
            from pplx_embed.index.pgvector import PgVectorStore

            return PgVectorStore.create(location, model, dimensions, **kwargs)
        return EmbeddedIndex.create(location, model, dimensions, **kwargs)

    @staticmethod
    def open(location: str | os.PathLike, embedder=None, **options) -> VectorStore:
        """Open an existing store; ``embedder`` (optional) must be the index's model."""
        from pplx_embed.index.embedded import EmbeddedIndex

        if str(location).startswith("milvus:"):
            from pplx_embed.index.milvus import MilvusStore

            return MilvusStore.open(location, embedder=embedder, **options)
        if str(location).startswith(PG_PREFIXES):
            from pplx_embed.index.pgvector import PgVectorStore

            return PgVectorStore.open(location, embedder=embedder, **options)
        return EmbeddedIndex.open(location, embedder=embedder, **options)

    def _check_model_args(self) -> None:
        if self.dimensions % 8:
            raise ValueError(f"dimensions must be a multiple of 8 for binary codes, got {self.dimensions}")
        if self.full_dimension < self.dimensions:
            raise ValueError(f"dimensions {self.dimensions} exceed the model's {self.full_dimension}")
        if self._embedder is not None:
            self.use(self._embedder)

    def info(self) -> dict[str, Any]:
        """What the store records about its vectors."""
        return {"model": self.model, "dimensions": self.dimensions, "full_dimension": self.full_dimension,
                "quantization": ["binary", "int8"] + (["float"] if self.store_float else []),
                "contextual": self.contextual}

    # ---- the embedder -------------------------------------------------------------------------
    @property
    def embedder(self):
        """The index's model (loaded on first use when none was given)."""
        if self._embedder is None:
            from pplx_embed import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    def use(self, embedder) -> None:
        """Embed texts and queries with ``embedder``; it must be the index's model."""
        if embedder.name != self.model:
            raise ValueError(f"this index holds vectors of {self.model!r}; "
                             f"it cannot use the embedder of {embedder.name!r}")
        self._embedder = embedder

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model:
            raise ValueError(f"vectors of model {model!r} cannot go into or query an index of {self.model!r}")

    # ---- input validation ---------------------------------------------------------------------
    def _vectors(self, vectors: Any, what: str = "vectors") -> tuple[np.ndarray, np.ndarray | None]:
        """(int8, float or None) at the index dimensions from float or int8 input of dims or full dims."""
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{what} must be a non-empty [n, dim] array, got shape {x.shape}")
        if x.shape[1] not in (self.dimensions, self.full_dimension):
            raise ValueError(f"{what} have {x.shape[1]} dimensions; this index ({self.model}) takes "
                             f"{self.dimensions}" + (f" or {self.full_dimension}" if self.full_dimension
                                                     != self.dimensions else ""))
        x = truncate(x, self.dimensions)
        if x.dtype == np.int8:
            if self.store_float:
                raise ValueError("this index stores float vectors for rescoring; pass float vectors, not int8")
            return np.ascontiguousarray(x), None
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{what} must be float or int8 arrays, got {x.dtype}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return to_int8(x), x

    def _batch(self, ids: Sequence[str], vectors: Any, texts: Sequence[str | None] | None,
               metadata: Sequence[dict | None] | None, doc_ids=None, positions=None,
               binary: np.ndarray | None = None) -> Batch:
        ids = list(ids)
        n = len(ids)
        if n == 0:
            raise ValueError("nothing to add: ids is empty")
        for i in ids:
            if not isinstance(i, str) or not i:
                raise ValueError(f"ids must be non-empty strings, got {i!r}")
        if len(set(ids)) != n:
            raise ValueError("ids repeat within the batch; each id may appear once")
        int8, floats = self._vectors(vectors)
        if int8.shape[0] != n:
            raise ValueError(f"{n} ids but {int8.shape[0]} vectors")
        texts = list(texts) if texts is not None else [None] * n
        metadata = [dict(m) if m else {} for m in metadata] if metadata is not None else [{}] * n
        for name, values in (("texts", texts), ("metadata", metadata)):
            if len(values) != n:
                raise ValueError(f"{n} ids but {len(values)} {name}")
        for m in metadata:
            for key in m:
                if not isinstance(key, str) or not _KEY.match(key):
                    raise ValueError(f"metadata key {key!r} is not valid (letters, digits, _ . -)")
        if binary is None:
            binary = to_binary(floats if floats is not None else int8.astype(np.float32))
        else:
            binary = self._binary_codes(binary, n)
        return Batch(ids, int8, binary, floats if self.store_float else None, texts, metadata,
                     list(doc_ids) if doc_ids is not None else [None] * n,
                     list(positions) if positions is not None else [None] * n)

    def _binary_codes(self, binary: Any, n: int) -> np.ndarray:
        """Packed binary codes of dims/8 (or full dims/8, truncated) bytes per row, MSB first."""
        b = np.asarray(binary)
        widths = {self.dimensions // 8, self.full_dimension // 8}
        if b.dtype != np.uint8 or b.ndim != 2 or b.shape[0] != n or b.shape[1] not in widths:
            raise ValueError(f"binary codes must be uint8 [{n}, {self.dimensions // 8}] (packed bits of "
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
            raise ValueError("this index keeps float vectors for rescoring; add float vectors with upsert(vectors=...)")
        int8 = np.asarray(int8)
        if int8.dtype != np.int8:
            raise TypeError(f"int8 codes must be an int8 array, got {int8.dtype}")
        batch = self._batch(ids, int8, texts, metadata, binary=binary)
        self._write(batch, replace=True)
        return len(batch.ids)

    def add(self, texts: Sequence[str] | None = None, *, ids: Sequence[str], vectors: Any = None,
            metadata: Sequence[dict | None] | None = None, model: str | None = None,
            show_progress_bar: bool = False, truncation: str | None = None) -> int:
        """Add new items (texts are embedded with the index's model unless ``vectors`` are given).

        Atomic: the whole batch is stored, or nothing (an id already present is an error).
        ``truncation`` (``right``/``left``) shortens over-long texts instead of refusing them.
        """
        return self._add(texts, ids, vectors, metadata, model, show_progress_bar, truncation, replace=False)

    def upsert(self, texts: Sequence[str] | None = None, *, ids: Sequence[str], vectors: Any = None,
               metadata: Sequence[dict | None] | None = None, model: str | None = None,
               show_progress_bar: bool = False, truncation: str | None = None) -> int:
        """Add items, replacing any with the same id. Atomic per call."""
        return self._add(texts, ids, vectors, metadata, model, show_progress_bar, truncation, replace=True)

    def _add(self, texts, ids, vectors, metadata, model, show_progress_bar, truncation, replace: bool) -> int:
        self._check_model(model)
        if texts is not None and (isinstance(texts, str) or not all(isinstance(t, str) for t in texts)):
            raise TypeError("texts must be a list of strings")
        if vectors is None:
            if texts is None:
                raise ValueError("give texts to embed, or vectors")
            vectors = self.embedder.encode(list(texts), dimensions=self.dimensions,
                                           show_progress_bar=show_progress_bar, truncation=truncation)
        batch = self._batch(ids, vectors, texts, metadata)
        self._write(batch, replace)
        return len(batch.ids)

    def add_documents(self, documents: Sequence[Sequence[str]], doc_ids: Sequence[str], *,
                      metadata: Sequence[dict | None] | None = None, replace: bool = True,
                      show_progress_bar: bool = False, truncation: str | None = None) -> int:
        """Index each document's chunks with late chunking (``encode_contextual``).

        Chunk ids are ``"{doc_id}#{position}"``; search hits carry ``doc_id`` and ``position``.
        Document metadata is copied to each of its chunks. Re-adding a document replaces its chunks.
        """
        doc_ids = list(doc_ids)
        if len(doc_ids) != len(documents):
            raise ValueError(f"{len(documents)} documents but {len(doc_ids)} doc_ids")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("doc_ids repeat; each document may appear once per call")
        metadata = list(metadata) if metadata is not None else [None] * len(doc_ids)
        vectors = self.embedder.encode_contextual([list(d) for d in documents], dimensions=self.dimensions,
                                                  show_progress_bar=show_progress_bar, truncation=truncation)
        ids, texts, metas, docs, positions = [], [], [], [], []
        for doc_id, chunks, meta in zip(doc_ids, documents, metadata):
            for position, chunk in enumerate(chunks):
                ids.append(f"{doc_id}#{position}")
                texts.append(chunk)
                metas.append(meta)
                docs.append(doc_id)
                positions.append(position)
        batch = self._batch(ids, np.concatenate(vectors), texts, metas, docs, positions)
        if replace:
            self._delete_documents(doc_ids)
        self._write(batch, replace)
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove items by id; returns how many existed."""
        if isinstance(ids, str):
            ids = [ids]
        return self._delete(list(ids))

    # ---- searching ----------------------------------------------------------------------------
    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query texts → float vectors at the index dimensions (``[[query]]`` for a contextual index)."""
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"queries[{i}] must be a string, got {type(q).__name__}")
            if not q.strip():
                raise ValueError(f"queries[{i}] is empty; a query needs some text")
        if self.contextual:
            return np.concatenate(self.embedder.encode_contextual([[q] for q in queries],
                                                                  dimensions=self.dimensions))
        return self.embedder.encode(list(queries), dimensions=self.dimensions)

    def search(self, query: str | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
               candidates: int | None = None, rescore: str = "int8", model: str | None = None) -> list[Hit]:
        """The ``k`` best items for one query (text, or a float / int8 vector of this model)."""
        if isinstance(query, str):
            return self.search_many([query], k, filter=filter, candidates=candidates, rescore=rescore)[0]
        q = np.asarray(query)
        if q.ndim != 1:
            raise ValueError(f"a query vector must be 1-D, got shape {q.shape}; use search_many for several")
        return self.search_many(q[None, :], k, filter=filter, candidates=candidates, rescore=rescore,
                                model=model)[0]

    def search_many(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
                    candidates: int | None = None, rescore: str = "int8", model: str | None = None) -> list[list[Hit]]:
        """Search several queries: binary first stage for ``candidates`` per query, then rescoring.

        ``rescore`` is ``int8`` (cosine on int8, default), ``float`` (needs ``store_float``) or
        ``none`` (Hamming order, score = 1 - 2·hamming/dims). ``filter`` keeps items whose metadata
        equals every given key/value.
        """
        prepared = self._prepare(queries, k, filter, rescore, model)
        with self._reading():
            rows, scores = self._search_prepared(*prepared, candidates)
            return self._fetch_many(rows, scores)

    def search_rows(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
                    candidates: int | None = None, rescore: str = "int8",
                    model: str | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Like :meth:`search_many` but returns backend row keys and scores (no item lookup)."""
        prepared = self._prepare(queries, k, filter, rescore, model)
        with self._reading():
            return self._search_prepared(*prepared, candidates)

    def _prepare(self, queries, k, filter, rescore, model) -> tuple:
        """Validate the arguments and turn the queries into (int8, float or None, binary) vectors."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if rescore not in RESCORE_MODES:
            raise ValueError(f"rescore must be one of {', '.join(RESCORE_MODES)}, got {rescore!r}")
        if rescore == "float" and not self.store_float:
            raise ValueError("float rescoring needs an index created with store_float=True")
        where = check_filter(filter)
        if isinstance(queries, str):
            raise TypeError("search_many takes a list of queries; use search for one")
        if isinstance(queries, np.ndarray):
            self._check_model(model)
            int8, floats = self._vectors(queries, "query vectors")
            if rescore == "float" and floats is None:
                raise ValueError("float rescoring needs float query vectors")
        else:
            queries = list(queries)
            if not queries:
                raise ValueError("no queries given")
            int8, floats = self._vectors(self.embed_queries(queries), "query vectors")
        binary = to_binary(floats if floats is not None else int8.astype(np.float32))
        # int8 rescoring compares the stored int8 codes with the query's code before rounding
        # (tanh(x)·127 up to scale) when the query is float: same transform, no query rounding error
        rescoring = np.tanh(floats) if floats is not None else int8
        return rescoring, floats, binary, int(k), where, rescore

    def _search_prepared(self, int8, floats, binary, k, where, rescore, candidates):
        n_candidates = max(k, candidates if candidates is not None else max(100, 10 * k))
        return self._rescore(self._first_stage(binary, int8, n_candidates, where), binary, int8, floats, k, rescore)

    def _rescore(self, first: list[np.ndarray], binary: np.ndarray, int8: np.ndarray, floats: np.ndarray | None,
                 k: int, rescore: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        first = [cand[cand >= 0] if cand.dtype.kind == "i" else cand for cand in first]
        if rescore == "none":
            out_rows, out_scores = [], []
            for i, cand in enumerate(first):
                dist = hamming_distance(binary[i], self._codes(cand, "binary"))[0] if len(cand) else np.zeros(0)
                order = np.argsort(dist, kind="stable")[:k]
                out_rows.append(cand[order])
                out_scores.append((1.0 - 2.0 * dist[order] / self.dimensions).astype(np.float32))
            return out_rows, out_scores
        queries = floats if rescore == "float" else int8
        out_rows, out_scores = [], []
        for start in range(0, len(first), 64):  # bounded memory: 64 queries' candidates at a time
            part = first[start : start + 64]
            wanted = np.concatenate(part) if any(len(c) for c in part) else np.zeros(0, np.int64)
            codes = self._codes(wanted, rescore) if len(wanted) else np.zeros((0, self.dimensions))
            rows, scores = rescore_top(queries[start : start + 64], part, codes, k)
            out_rows += rows
            out_scores += scores
        return out_rows, out_scores

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

    @abstractmethod
    def _codes(self, rows: np.ndarray, precision: str) -> np.ndarray:
        """The stored ``binary`` / ``int8`` / ``float`` vectors of ``rows``."""

    @abstractmethod
    def _fetch(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits (id, text, metadata …) for row keys in order."""

    def _fetch_many(self, rows: list[np.ndarray], scores: list[np.ndarray]) -> list[list[Hit]]:
        return [self._fetch(r, s) for r, s in zip(rows, scores)]

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
