"""Milvus backend: the same ``VectorStore`` on a Milvus cluster or on Milvus Lite (a local file).

Locations: ``milvus:path/to/file.db#collection`` (Milvus Lite) or ``milvus://host:19530/collection``
(a server or cluster; ``MILVUS_TOKEN`` in the environment authenticates). One collection per
index: ``id`` (primary key), ``binary`` (BINARY_VECTOR, Hamming, ``BIN_FLAT`` or ``BIN_IVF_FLAT``),
``int8`` (the int8 codes, base64 in a VARCHAR: Milvus Lite has no INT8 vectors; used for rescoring),
``text``, ``metadata`` (JSON), ``doc_id``, ``position``.
The collection description records model, dimensions and the rest of the index facts.

Milvus makes each insert request (up to 2,000 rows) visible as a whole but has no multi-request
transactions, and an upsert
is a delete plus an insert on the server; crash safety is Milvus's own (its write-ahead log).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pplx_embed.errors import InputError
from pplx_embed.index.store import Batch, Hit, IndexNotFoundError, VectorStore, new_store_shape

DEFAULT_COLLECTION = "pplx_index"
INDEX_TYPES = {"flat": "BIN_FLAT", "ivf": "BIN_IVF_FLAT"}  # shared first_stage option → Milvus index type
INSERT_ROWS = 2000  # rows per insert request (gRPC message size)


def parse_location(location: str) -> tuple[str, str]:
    """``milvus:...`` → (client uri, collection)."""
    rest = location.removeprefix("milvus:")
    if rest.startswith("//"):
        host, _, collection = rest[2:].partition("/")
        if not host:
            raise InputError(f"no host in {location!r}; use milvus://host:port/collection")
        return f"http://{host}", collection or DEFAULT_COLLECTION
    path, _, collection = rest.partition("#")
    if not path.endswith(".db"):
        raise InputError(f"a Milvus Lite location is milvus:FILE.db#collection, got {location!r}")
    return os.path.abspath(path), collection or DEFAULT_COLLECTION


def _client(uri: str):
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))


def _pack(codes: np.ndarray) -> str:
    return base64.b64encode(codes.tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.int8)


def _quote(value: Any) -> str:
    return json.dumps(value)  # strings double-quoted with escapes; true/false; numbers


class MilvusStore(VectorStore):
    """A ``VectorStore`` kept in a Milvus collection (binary first stage on the server, int8 rescoring here)."""

    def __init__(self, client, collection: str, facts: dict[str, Any], embedder=None):
        super().__init__(embedder)
        self._client = client
        self.collection = collection
        self.index_type = facts.get("index_type", "BIN_FLAT")
        self.nprobe = 16
        self._remote_facts(facts)

    @classmethod
    def create(cls, location: str, model: str, dimensions: int | None = None, *, full_dimension: int | None = None,
               store_float: bool = False, contextual: bool = False, first_stage: str | None = None,
               query_model: str | None = None, embedder=None, nlist: int = 1024) -> MilvusStore:
        """A new collection; ``first_stage`` ``flat`` (default) is ``BIN_FLAT``, ``ivf`` is ``BIN_IVF_FLAT``."""
        from pymilvus import DataType, MilvusClient

        if store_float:
            raise InputError("the Milvus backend rescores with int8 only; create it without store_float")
        index_type = INDEX_TYPES.get(first_stage or "flat")
        if index_type is None:
            raise InputError(f"the Milvus backend's first stage is flat or ivf, got {first_stage!r}")
        dimensions, full_dimension = new_store_shape(model, dimensions, full_dimension)
        uri, collection = parse_location(location)
        client = _client(uri)
        if client.has_collection(collection):
            raise FileExistsError(f"an index already exists at {location}")
        facts = {"format": "pplx-embed-milvus/1", "model": model, "dimensions": dimensions,
                 "full_dimension": full_dimension, "contextual": contextual, "index_type": index_type,
                 "query_model": query_model}
        schema = MilvusClient.create_schema(auto_id=False, description=json.dumps(facts))
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
        schema.add_field("binary", DataType.BINARY_VECTOR, dim=dimensions)
        schema.add_field("int8", DataType.VARCHAR, max_length=4 * (dimensions // 3 + 1))
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("position", DataType.INT64)
        params = client.prepare_index_params()
        params.add_index("binary", index_type=index_type, metric_type="HAMMING",
                         params={"nlist": nlist} if index_type == "BIN_IVF_FLAT" else {})
        client.create_collection(collection, schema=schema, index_params=params, consistency_level="Strong")
        return cls(client, collection, facts, embedder)

    @classmethod
    def open(cls, location: str, embedder=None) -> MilvusStore:
        uri, collection = parse_location(location)
        if uri.endswith(".db") and not os.path.exists(uri):
            raise IndexNotFoundError(f"no index at {location} (no Milvus Lite file {uri})")
        client = _client(uri)
        if not client.has_collection(collection):
            raise IndexNotFoundError(f"no index at {location} (no collection {collection!r})")
        try:
            facts = json.loads(client.describe_collection(collection).get("description") or "")
            assert facts.get("format") == "pplx-embed-milvus/1"
        except (ValueError, AssertionError):
            raise InputError(f"collection {collection!r} was not created by pplx-embed") from None
        client.load_collection(collection)
        return cls(client, collection, facts, embedder)

    # ---- writing ------------------------------------------------------------------------------
    def _existing(self, ids: list[str]) -> list[str]:
        found = []
        for start in range(0, len(ids), 1000):
            found += [r["id"] for r in self._client.get(self.collection, ids=ids[start : start + 1000],
                                                         output_fields=["id"])]
        return found

    def _write(self, batch: Batch, replace: bool) -> None:
        with self._lock:
            if not replace:
                taken = self._existing(batch.ids)
                if taken:
                    raise InputError(f"{len(taken)} id(s) already in the index (e.g. {', '.join(taken[:5])}); "
                                     "use upsert to replace them")
            rows = [{"id": i, "binary": b.tobytes(), "int8": _pack(q), "text": t or "", "metadata": m,
                     "doc_id": d or "", "position": -1 if p is None else p}
                    for i, b, q, t, m, d, p in zip(batch.ids, batch.binary, batch.int8, batch.texts, batch.metadata,
                                                   batch.doc_ids, batch.positions)]
            for start in range(0, len(rows), INSERT_ROWS):
                (self._client.upsert if replace else self._client.insert)(self.collection,
                                                                           rows[start : start + INSERT_ROWS])

    def _delete(self, ids: list[str]) -> int:
        with self._lock:
            found = self._existing(ids)
            if found:
                self._client.delete(self.collection, ids=found)
            return len(found)

    def _delete_documents(self, doc_ids: list[str]) -> int:
        with self._lock:
            expr = f"doc_id in [{', '.join(_quote(d) for d in doc_ids)}]"
            found = self._client.query(self.collection, filter=expr, output_fields=["id"])
            if found:
                self._client.delete(self.collection, ids=[r["id"] for r in found])
            return len(found)

    # ---- searching ----------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            yield

    def _first_stage(self, binary: np.ndarray, dense: np.ndarray, n: int, where: dict[str, Any]) -> list[np.ndarray]:
        expr = " and ".join(f'metadata[{_quote(k)}] == {_quote(v)}' for k, v in where.items())
        if any(v is None for v in where.values()):
            raise InputError("the Milvus backend cannot filter on null metadata values")
        params = {"metric_type": "HAMMING", "params": {"nprobe": self.nprobe}}
        self._codes_cache = {}
        out = []
        for start in range(0, len(binary), 64):
            part = binary[start : start + 64]
            results = self._client.search(self.collection, data=[b.tobytes() for b in part], anns_field="binary",
                                          limit=min(n, 16384), filter=expr, output_fields=["int8"],
                                          search_params=params)
            for hits in results:
                for h in hits:
                    self._codes_cache[h["id"]] = _unpack(h["entity"]["int8"])
                out.append(np.array([h["id"] for h in hits], dtype=object))
        return out

    def _codes(self, rows: np.ndarray, precision: str) -> np.ndarray:
        if precision == "int8":
            missing = [r for r in rows if r not in self._codes_cache]
            for r in self._client.get(self.collection, ids=missing, output_fields=["int8"]) if missing else []:
                self._codes_cache[r["id"]] = _unpack(r["int8"])
            return np.stack([self._codes_cache[r] for r in rows])
        if precision == "binary":
            got = {r["id"]: r["binary"] for r in self._client.get(self.collection, ids=list(rows),
                                                                  output_fields=["binary"])}
            return np.stack([np.frombuffer(got[r][0] if isinstance(got[r], list) else got[r], np.uint8)
                             for r in rows])
        raise InputError(f"the Milvus backend stores binary and int8 vectors, not {precision!r}")

    def _fetch(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        if len(rows) == 0:
            return []
        got = {r["id"]: r for r in self._client.get(self.collection, ids=list(rows),
                                                    output_fields=["text", "metadata", "doc_id", "position"])}
        return [Hit(r, float(s), got[r]["text"] or None, got[r]["metadata"] or {}, got[r]["doc_id"] or None,
                    None if got[r]["position"] < 0 else got[r]["position"])
                for r, s in zip(rows, scores) if r in got]

    # ---- facts --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._client.query(self.collection, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def stats(self) -> dict[str, Any]:
        return {**self.info(), "backend": "milvus", "collection": self.collection, "items": len(self),
                "index_type": self.index_type,
                "bytes_per_vector": {"binary": self.dimensions // 8, "int8": self.dimensions},
                "search_structure_bytes_per_vector": self.dimensions // 8}

    def close(self) -> None:
        self._client.close()
