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

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pplx_embed.errors import InputError
from pplx_embed.model.quantization import check_dimensions, hamming_distance, to_binary, to_int8, truncate

RESCORE_MODES = ("int8", "float", "none")
MAX_FILTER_KEYS = 32
MAX_ID_LENGTH = 1024
MAX_CANDIDATES = 16_384
MAX_METADATA_DEPTH = 32
MAX_METADATA_VALUES = 10_000
INT64 = (-(2**63), 2**63 - 1)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


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
    dimensions = dimensions or full_dimension
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 8:
        raise InputError(f"dimensions must be a positive multiple of 8, got {dimensions!r}")
    full_dimension = full_dimension or dimensions
    check_dimensions(dimensions, full_dimension)
    if dimensions % 8:
        raise InputError(f"dimensions must be a multiple of 8 for binary codes, got {dimensions}")
    return dimensions, full_dimension


def _scalar_ok(value: Any) -> bool:
    """A JSON scalar SQLite can compare exactly: strings, booleans, int64 integers, finite floats, null."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    return isinstance(value, float) and bool(np.isfinite(value))


def check_filter(where: dict[str, Any] | None) -> dict[str, Any]:
    """Validate an equality filter on metadata: ``{"key": value}`` with scalar JSON values, at most 32 keys."""
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise InputError(f"filter must be a dict of metadata key -> value, got {type(where).__name__}")
    if len(where) > MAX_FILTER_KEYS:
        raise InputError(f"filter has {len(where)} keys; at most {MAX_FILTER_KEYS} are allowed")
    for key, value in where.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InputError(f"filter key {str(key)[:80]!r} is not a valid metadata key (letters, digits, _ . -)")
        if not _scalar_ok(value):
            raise InputError(f"filter value for {key!r} must be a string, a 64-bit integer, a finite number, "
                             "a boolean or null")
    return where


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Validate one item's metadata: a JSON object with valid top-level keys, at most 32 levels deep and
    10,000 values, integers within 64 bits and finite numbers (what SQLite's JSON functions can hold)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InputError(f"metadata must be an object (dict), got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str) or not _KEY.match(key):
            raise InputError(f"metadata key {str(key)[:80]!r} is not valid (letters, digits, _ . -)")
    stack, seen = [(metadata, 1)], 0
    while stack:  # iterative: a deeply nested value cannot exhaust the interpreter's stack
        value, depth = stack.pop()
        seen += 1
        if depth > MAX_METADATA_DEPTH or seen > MAX_METADATA_VALUES:
            raise InputError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels or holds more than "
                             f"{MAX_METADATA_VALUES} values")
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise InputError("metadata object keys must be strings")
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            stack += [(v, depth + 1) for v in value]
        elif not _scalar_ok(value):
            raise InputError(f"metadata holds {str(value)[:40]!r}: values must be JSON (strings, 64-bit integers, "
                             "finite numbers, booleans, null, lists, objects)")
    return dict(metadata)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32 unit vectors (zero rows stay zero): cosine becomes an inner product."""
    rows = np.array(rows, dtype=np.float32, order="C")  # one copy, normalized in place
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return rows


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
    query_model: str | None = None  # embeds text queries when set (else ``model``)

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
            from pplx_embed import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    @property
    def query_embedder(self):
        """The model that embeds text queries: the recorded query model (loaded on first use), else the index's."""
        if self.query_model is None:
            return self.embedder
        if self._query_embedder is None:
            from pplx_embed import Embedder

            self.use(Embedder(self.query_model))
        return self._query_embedder

    def use(self, embedder) -> None:
        """Embed with ``embedder``: the index's model (documents, and queries unless a query model is
        recorded) or its query model (queries); any other model is refused."""
        if embedder.name not in (self.model, self.query_model):
            paired = f" and queries of {self.query_model!r}" if self.query_model else ""
            raise InputError(f"this index holds vectors of {self.model!r}{paired}; "
                             f"it cannot use the embedder of {embedder.name!r}")
        if embedder.name == self.query_model:
            if getattr(embedder, "dimension", self.full_dimension) != self.full_dimension:
                raise InputError(f"query model {embedder.name!r} embeds {embedder.dimension} dimensions; "
                                 f"the index's model has {self.full_dimension}")
            self._query_embedder = embedder
        if embedder.name == self.model:
            self._embedder = embedder

    def _check_model(self, model: str | None, query: bool = False) -> None:
        if model is not None and model != self.model and not (query and model == self.query_model):
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

    def _batch(self, ids: Sequence[str], vectors: Any, texts: Sequence[str | None] | None,
               metadata: Sequence[dict | None] | None, doc_ids=None, positions=None,
               binary: np.ndarray | None = None) -> Batch:
        if isinstance(ids, str):
            raise InputError("ids must be a list of strings, not one string")
        ids = list(ids)
        n = len(ids)
        if n == 0:
            raise InputError("nothing to add: ids is empty")
        for i in ids:
            if not isinstance(i, str) or not i or len(i) > MAX_ID_LENGTH:
                raise InputError(f"ids must be non-empty strings of at most {MAX_ID_LENGTH} characters, "
                                 f"got {str(i)[:80]!r}")
        if len(set(ids)) != n:
            raise InputError("ids repeat within the batch; each id may appear once")
        int8, floats = self._vectors(vectors)
        if int8.shape[0] != n:
            raise InputError(f"{n} ids but {int8.shape[0]} vectors")
        texts = list(texts) if texts is not None else [None] * n
        if not all(t is None or isinstance(t, str) for t in texts):
            raise InputError("texts must be strings (or None)")
        metadata = [check_metadata(m) for m in metadata] if metadata is not None else [{}] * n
        for name, values in (("texts", texts), ("metadata", metadata)):
            if len(values) != n:
                raise InputError(f"{n} ids but {len(values)} {name}")
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
        int8 = np.asarray(int8)
        if int8.dtype != np.int8:
            raise InputError(f"int8 codes must be an int8 array, got {int8.dtype}")
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
            raise InputError("texts must be a list of strings")
        if vectors is None:
            if texts is None:
                raise InputError("give texts to embed, or vectors")
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
            raise InputError(f"{len(documents)} documents but {len(doc_ids)} doc_ids")
        if len(set(doc_ids)) != len(doc_ids):
            raise InputError("doc_ids repeat; each document may appear once per call")
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
        """Query texts → float vectors at the index dimensions: by the query model when one is recorded,
        else by the index's model (as ``[[query]]``, a one-chunk document, for a contextual index)."""
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise InputError(f"queries[{i}] must be a string, got {type(q).__name__}")
            if not q.strip():
                raise InputError(f"queries[{i}] is empty; a query needs some text")
        if self.query_model is not None:
            return self.query_embedder.encode(list(queries), dimensions=self.dimensions)
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
            raise InputError(f"a query vector must be 1-D, got shape {q.shape}; use search_many for several")
        return self.search_many(q[None, :], k, filter=filter, candidates=candidates, rescore=rescore,
                                model=model)[0]

    def search_many(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
                    candidates: int | None = None, rescore: str = "int8", model: str | None = None) -> list[list[Hit]]:
        """Search several queries: binary first stage for ``candidates`` per query, then rescoring.

        ``rescore`` is ``int8`` (cosine on int8, default), ``float`` (needs ``store_float``) or
        ``none`` (Hamming order, score = 1 - 2·hamming/dims). ``filter`` keeps items whose metadata
        equals every given key/value.
        """
        prepared = self._prepare(queries, k, filter, rescore, model, candidates)
        with self._reading():
            rows, scores = self._search_prepared(*prepared)
            return self._fetch_many(rows, scores)

    def search_rows(self, queries: Sequence[str] | np.ndarray, k: int = 10, *, filter: dict[str, Any] | None = None,
                    candidates: int | None = None, rescore: str = "int8",
                    model: str | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Like :meth:`search_many` but returns backend row keys and scores (no item lookup)."""
        prepared = self._prepare(queries, k, filter, rescore, model, candidates)
        with self._reading():
            return self._search_prepared(*prepared)

    def _prepare(self, queries, k, filter, rescore, model, candidates) -> tuple:
        """Validate the arguments → (rescoring vectors, float or None, binary codes, k, filter, rescore,
        first-stage candidates per query)."""
        for name, value in (("k", k), ("candidates", candidates)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or not 1 <= value <= MAX_CANDIDATES):
                raise InputError(f"{name} must be an integer from 1 to {MAX_CANDIDATES}, got {value!r}")
        if rescore not in RESCORE_MODES:
            raise InputError(f"rescore must be one of {', '.join(RESCORE_MODES)}, got {rescore!r}")
        if rescore == "float" and not self.store_float:
            raise InputError("float rescoring needs an index created with store_float=True")
        where = check_filter(filter)
        if isinstance(queries, str):
            raise InputError("search_many takes a list of queries; use search for one")
        if isinstance(queries, np.ndarray):
            self._check_model(model, query=True)
            int8, floats = self._vectors(queries, "query vectors")
            if rescore == "float" and floats is None:
                raise InputError("float rescoring needs float query vectors")
        else:
            queries = list(queries)
            if not queries:
                raise InputError("no queries given")
            int8, floats = self._vectors(self.embed_queries(queries), "query vectors")
        binary = to_binary(floats if floats is not None else int8.astype(np.float32))
        # int8 rescoring compares the stored int8 codes with the query's code before rounding
        # (tanh(x)·127 up to scale) when the query is float: same transform, no query rounding error
        rescoring = np.tanh(floats) if floats is not None else int8
        n_candidates = min(MAX_CANDIDATES, max(k, candidates if candidates is not None else max(100, 10 * k)))
        return rescoring, floats, binary, int(k), where, rescore, int(n_candidates)

    def _search_prepared(self, int8, floats, binary, k, where, rescore, n_candidates):
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

    def check(self) -> dict[str, Any]:
        """Verify the stored index (a database backend's integrity is the database's own)."""
        return {"ok": True, "items": len(self), "verified_by": "the database"}

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
