"""A ``pplx_embed.index`` index at any location, as the frameworks' vector stores use it.

The index is opened when it exists and created on the first write otherwise (its width is that of
the first vectors; a contextual source makes a contextual index, a query model is recorded). Vectors
arrive in the source's precision: int8 codes go in as they are (the model's own codes, exactly what
the index rescores with), float vectors are quantized by the index, ±1 binary vectors become their
sign bits (and ±97 int8 codes, so rescoring keeps the Hamming order). Scores are the index's: cosine
of the int8 codes.

Contextual documents: each chunk is stored as ``"{doc_id}#{position}"`` with its text and metadata
plus ``doc_id``, ``position``, ``char_start`` and ``char_end`` (offsets into the document's text,
``None`` when a chunk is not a substring of it), so a search can filter by document and a hit
points back into its source. Re-adding a document replaces its chunks.

The index API has no listing call, so :meth:`Collection.items` lists through a search with a zero
query over every item (at most 16,384 matches; more is an error, never a silent cut).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pplx_embed.errors import InputError
from pplx_embed.index import Hit, Index, IndexNotFoundError, VectorStore
from pplx_embed.index.query import MAX_CANDIDATES
from pplx_embed.integrations.source import check_dimensions, check_precision

CHUNK_FIELDS = ("doc_id", "position", "char_start", "char_end")


def locate(text: str, chunks: Sequence[str]) -> list[tuple[int, int] | None]:
    """Character spans of ``chunks`` in ``text``, searched in order (overlapping chunks allowed)."""
    spans, cursor = [], 0
    for chunk in chunks:
        at = text.find(chunk, cursor) if chunk else -1
        spans.append(None if at < 0 else (at, at + len(chunk)))
        cursor = at + 1 if at >= 0 else cursor
    return spans


def chunk_metadata(doc_id: str, position: int, span: tuple[int, int] | None,
                   metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A chunk's metadata: its document's, plus where the chunk sits in it."""
    start, end = span if span is not None else (None, None)
    return {**(metadata or {}), "doc_id": doc_id, "position": position, "char_start": start, "char_end": end}


class Collection:
    """Items (id, text, metadata, vector) in an index at ``location``; thread-safe like the index.

    ``model`` is the vectors' model name (or a function giving it, called when first needed);
    ``dimensions``, when given, must match an existing index.
    """

    def __init__(self, location: str | os.PathLike, model: str | Callable[[], str], precision: str, *,
                 dimensions: int | None = None, contextual: bool = False, query_model: str | None = None):
        if not isinstance(location, (str, os.PathLike)) or not str(location):
            raise InputError(f"location must be an index location (a directory, pgserver:…, postgresql://…, "
                             f"milvus:…), got {location!r}")
        self.location = str(location)
        self._model = model
        self.precision = check_precision(precision)
        self.dimensions = check_dimensions(dimensions)
        self.contextual, self.query_model = contextual, query_model
        self._lock = threading.Lock()
        self._index: VectorStore | None = None
        self._open()

    @property
    def model(self) -> str:
        if callable(self._model):
            self._model = self._model()
        return self._model

    # ---- the index ----------------------------------------------------------------------------
    def _open(self) -> VectorStore | None:
        with self._lock:
            if self._index is None:
                try:
                    self._index = Index.open(self.location)
                except IndexNotFoundError:
                    return None
                if self.dimensions is not None and self._index.dimensions != self.dimensions:
                    found = self._index.dimensions
                    self._index.close()
                    self._index = None
                    raise InputError(f"the index at {self.location} holds {found}-dimension vectors; "
                                     f"these embeddings have dimensions={self.dimensions}")
            return self._index

    def _create(self, width: int) -> VectorStore:
        with self._lock:
            if self._index is None:
                self._index = Index.create(self.location, self.model, width, contextual=self.contextual,
                                           query_model=self.query_model)
            return self._index

    @property
    def index(self) -> VectorStore | None:
        """The open index (``None`` until it exists)."""
        return self._open()

    # ---- vectors ------------------------------------------------------------------------------
    def vectors(self, values: Any, what: str = "embeddings") -> np.ndarray:
        """Framework vectors (float lists, or arrays from the source) → what the index takes."""
        try:
            x = np.asarray(values)
            if x.dtype != np.int8:
                x = x.astype(np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be equal-length lists of numbers") from None
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise InputError(f"{what} must be a non-empty list of non-empty vectors, got shape {list(x.shape)}")
        if not np.isfinite(x.astype(np.float32)).all():
            raise InputError(f"{what} contain NaN or infinite values")
        if self.precision == "int8":
            if x.dtype != np.int8:
                if (x != np.round(x)).any() or x.min() < -128 or x.max() > 127:
                    raise InputError(f"{what} are not int8 codes (integers from -128 to 127) but this store holds "
                                     "precision='int8' vectors; embed with the same precision as the store")
                x = x.astype(np.int8)
            return x
        if self.precision == "binary":
            if not np.isin(x, (-1, 1)).all():
                raise InputError(f"{what} are not ±1 vectors but this store holds precision='binary' vectors; "
                                 "embed with the same precision as the store")
            return x.astype(np.float32)
        return x.astype(np.float32)

    # ---- writing ------------------------------------------------------------------------------
    def write(self, ids: Sequence[str], vectors: Any, texts: Sequence[str], metadata: Sequence[dict | None],
              replace: bool = True) -> list[str]:
        """Store items atomically; ``replace`` overwrites existing ids, else an existing id refuses the batch."""
        x = self.vectors(vectors)
        index = self._open() or self._create(x.shape[1])
        (index.upsert if replace else index.add)(list(texts), ids=list(ids), vectors=x, metadata=list(metadata),
                                                 model=self.model)
        return list(ids)

    def write_documents(self, doc_ids: Sequence[str], chunks: Sequence[Sequence[str]], vectors: Sequence[Any],
                        metadata: Sequence[dict[str, Any]]) -> list[str]:
        """Store late-chunked documents (one vector array per document, ``metadata`` per chunk, see
        :func:`chunk_metadata`), replacing any earlier chunks of the same documents; → the chunk ids."""
        if len(set(doc_ids)) != len(doc_ids):
            raise InputError("document ids repeat; each document may appear once per call")
        ids = [f"{d}#{p}" for d, doc in zip(doc_ids, chunks) for p in range(len(doc))]
        texts = [c for doc in chunks for c in doc]
        self.write(ids, np.concatenate([self.vectors(v) for v in vectors]), texts, metadata)
        fresh = set(ids)
        stale = [h.id for d in doc_ids for h in self.items({"doc_id": d}) if h.id not in fresh]
        self.delete(stale)  # after the new chunks are in: a crash in between leaves extra chunks, never none
        return ids

    def delete(self, ids: Sequence[str]) -> int:
        """Remove items by id (missing ids are no error); → how many existed."""
        index = self._open()
        return index.delete(list(ids)) if index is not None and ids else 0

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Remove every chunk of these contextual documents."""
        return self.delete([h.id for d in doc_ids for h in self.items({"doc_id": d})])

    # ---- reading ------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, filter: dict[str, Any] | None = None) -> list[list[Hit]]:
        """The ``k`` best items per query vector (binary first stage, int8 rescoring)."""
        x = self.vectors(queries, "query embeddings")
        index = self._open()
        if index is None:
            return [[] for _ in x]
        return index.search_many(x, k, filter=filter, model=self.query_model or self.model)

    def items(self, filter: dict[str, Any] | None = None) -> list[Hit]:
        """Every item (passing the equality ``filter``), in no particular order."""
        index = self._open()
        count = len(index) if index is not None else 0
        if count == 0:
            return []
        if filter is None and count > MAX_CANDIDATES:
            raise InputError(f"the index holds {count} items; listing them all is limited to {MAX_CANDIDATES}")
        k = min(count, MAX_CANDIDATES)
        zero = np.zeros((1, index.dimensions), np.float32)
        hits = index.search_many(zero, k, filter=filter, candidates=k, model=index.model)[0]
        if len(hits) == MAX_CANDIDATES < count:
            raise InputError(f"more than {MAX_CANDIDATES} items match {filter}; listing is limited to that many")
        return hits

    def get(self, ids: Sequence[str]) -> list[Hit]:
        wanted = set(ids)
        return [h for h in self.items() if h.id in wanted] if wanted else []

    def __len__(self) -> int:
        index = self._open()
        return len(index) if index is not None else 0

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None
