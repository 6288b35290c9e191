"""The embedded, persistent index: memory-mapped vector files + SQLite, in one directory.

Layout of an index directory::

    index.sqlite          manifest (model, dimensions, committed row count, generation) and items
                          (row, id, text, metadata JSON, doc_id, position)
    vectors.<gen>.binary  packed sign bits, dims/8 bytes per row   (first stage, Hamming)
    vectors.<gen>.int8    int8 codes, dims bytes per row           (rescoring, cosine)
    vectors.<gen>.float32 float32, 4·dims bytes per row            (only with store_float)
    ivf.npz               IVF centroids and each row's list (a cache; only with first_stage="ivf")

Crash safety: an add appends its rows to each vector file *after* the committed row count
(truncating any tail a killed writer left), fsyncs them, and only then commits the items and the
new count in one SQLite transaction (WAL, synchronous=FULL). Readers map exactly the committed
rows, so a process killed at any point leaves an index that opens with every acknowledged batch
and nothing half-written. Deletes and upserts leave tombstones (vector rows without an item);
:meth:`EmbeddedIndex.compact` rewrites the files without them under a new generation.

The first stage is an exact Hamming search with faiss ``IndexBinaryFlat`` over the binary codes
(dims/8 bytes per vector in memory), restricted to live (and filter-matching) rows by a bitmap, or
an inverted file: rows are partitioned by cosine to centroids trained on the int8 codes (spherical
k-means), each list holds binary codes, and a query scans the codes of its ``nprobe`` nearest lists.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pplx_embed.index.store import Batch, Hit, IndexNotFoundError, VectorStore, new_store_shape, unit_rows

FORMAT = "pplx-embed-index/1"
DB = "index.sqlite"
PRECISIONS = {"binary": np.uint8, "int8": np.int8, "float": np.float32}
SUFFIX = {"binary": "binary", "int8": "int8", "float": "float32"}
FIRST_STAGES = ("flat", "ivf")
IVF_MIN_ROWS = 10_000
IVF_FILE = "ivf.npz"
_SQL_VARS = 900  # stay below SQLite's bound-parameter limit

ITEMS = ("CREATE TABLE {name} (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT, "
         "metadata TEXT NOT NULL DEFAULT '{{}}', doc_id TEXT, position INTEGER)")
SCHEMA = f"""
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{ITEMS.format(name="items")};
CREATE INDEX items_doc ON items(doc_id);
"""


def _chunks(values: list, size: int = _SQL_VARS) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class EmbeddedIndex(VectorStore):
    """A persistent index in a directory; safe against crashes, one writer process at a time."""

    def __init__(self, path: Path, conn: sqlite3.Connection, manifest: dict[str, str], embedder=None):
        super().__init__(embedder)
        self.path = path
        self._conn = conn
        self.model = manifest["model"]
        self.dimensions = int(manifest["dimensions"])
        self.full_dimension = int(manifest["full_dimension"])
        self.store_float = manifest["store_float"] == "1"
        self.contextual = manifest["contextual"] == "1"
        self.first_stage = manifest.get("first_stage", "flat")
        self.nprobe = 16  # IVF lists visited per query (first_stage="ivf")
        self._lock = threading.RLock()
        self._faiss = self._quantizer = None
        self._indexed = 0
        self._check_model_args()
        self._load()

    # ---- create / open ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, model: str, dimensions: int | None = None, *,
               full_dimension: int | None = None, store_float: bool = False, contextual: bool = False,
               first_stage: str = "flat", embedder=None, exist_ok: bool = False) -> EmbeddedIndex:
        """A new empty index directory at ``path`` for ``model`` vectors at ``dimensions``.

        ``first_stage`` is ``flat`` (exact Hamming, the default) or ``ivf`` (faiss ``IndexBinaryIVF``,
        trained the first time the index is opened with at least 10,000 vectors; ``nprobe`` lists per query).
        """
        if first_stage not in FIRST_STAGES:
            raise ValueError(f"first_stage must be one of {', '.join(FIRST_STAGES)}, got {first_stage!r}")
        path = Path(path)
        if (path / DB).exists():
            if exist_ok:
                return cls.open(path, embedder=embedder)
            raise FileExistsError(f"an index already exists at {path}")
        dimensions, full_dimension = new_store_shape(model, dimensions, full_dimension)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "model": model, "dimensions": str(dimensions),
                    "full_dimension": str(full_dimension), "store_float": "1" if store_float else "0",
                    "contextual": "1" if contextual else "0", "first_stage": first_stage,
                    "count": "0", "generation": "0",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path / (DB + ".tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO manifest VALUES (?, ?)", manifest.items())
        conn.commit()
        conn.close()
        os.replace(tmp, path / DB)  # the index exists only once it is complete
        return cls.open(path, embedder=embedder)

    @classmethod
    def open(cls, path: str | os.PathLike, embedder=None) -> EmbeddedIndex:
        """Open the index at ``path``; ``embedder`` (optional) must be the index's model."""
        path = Path(path)
        if not (path / DB).is_file():
            raise IndexNotFoundError(f"no index at {path} (create one with `pplx-embed index create`)")
        conn = sqlite3.connect(path / DB, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        try:
            manifest = dict(conn.execute("SELECT key, value FROM manifest"))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ValueError(f"{path} is not a pplx-embed index ({exc})") from None
        if manifest.get("format") != FORMAT:
            conn.close()
            raise ValueError(f"{path} has index format {manifest.get('format')!r}; expected {FORMAT}")
        try:
            return cls(path, conn, manifest, embedder)
        except Exception:
            conn.close()
            raise

    # ---- state --------------------------------------------------------------------------------
    def _file(self, precision: str, generation: int | None = None) -> Path:
        gen = self._generation if generation is None else generation
        return self.path / f"vectors.{gen}.{SUFFIX[precision]}"

    def _precisions(self) -> list[str]:
        return ["binary", "int8"] + (["float"] if self.store_float else [])

    def _width(self, precision: str) -> int:
        return self.dimensions // 8 if precision == "binary" else self.dimensions

    def _row_bytes(self, precision: str) -> int:
        return self._width(precision) * np.dtype(PRECISIONS[precision]).itemsize

    def _map(self, precision: str) -> np.ndarray:
        shape = (self._count, self._width(precision))
        if self._count == 0:
            return np.zeros(shape, PRECISIONS[precision])
        return np.memmap(self._file(precision), dtype=PRECISIONS[precision], mode="r", shape=shape)

    def _load(self) -> None:
        """(Re)read the committed state: row count, generation, live rows, maps, first-stage index."""
        manifest = dict(self._conn.execute("SELECT key, value FROM manifest"))
        generation = int(manifest["generation"])
        rebuild = self._faiss is None or generation != getattr(self, "_generation", None)
        self._count = int(manifest["count"])
        self._generation = generation
        for precision in self._precisions():
            f = self._file(precision)
            size = f.stat().st_size if f.exists() else 0
            if size < self._count * self._row_bytes(precision):
                raise ValueError(f"index {self.path} is damaged: {f.name} holds {size} bytes, "
                                 f"fewer than its {self._count} committed rows need")
        self._maps = {p: self._map(p) for p in self._precisions()}
        self._live = np.zeros(self._count, dtype=bool)
        rows = np.fromiter((r for (r,) in self._conn.execute("SELECT row FROM items")), dtype=np.int64)
        self._live[rows] = True
        if rebuild or self._count < self._indexed:
            self._build_first_stage()
        else:
            self._index_new_rows()
        self._version = self._data_version()

    def _build_first_stage(self) -> None:
        """faiss over the binary codes: exact ``IndexBinaryFlat``, or an inverted file when asked and big enough.

        IVF: ``nlist = 2·√n`` centroids are trained once by spherical k-means on (up to 40 per list)
        int8 rows and kept, with each row's list, in ``ivf.npz``; later opens assign only new rows.
        Lists are faiss ``IndexBinaryIVF`` lists of binary codes, probed by the centroids' cosine to the query.
        """
        import faiss

        cache = self.path / IVF_FILE
        self._quantizer, self._lists, self._saved_lists = None, np.zeros(0, np.int32), 0
        if self.first_stage == "ivf" and (cache.exists() or self._count >= IVF_MIN_ROWS):
            if cache.exists():  # trained before
                with np.load(cache) as saved:
                    centroids = saved["centroids"]
                    if int(saved["generation"]) == self._generation:
                        self._lists = saved["lists"][: self._count].astype(np.int32)
                        self._saved_lists = len(saved["lists"])
            else:
                nlist = int(2 * np.sqrt(self._count))
                sample = np.random.default_rng(0).choice(self._count, min(self._count, 40 * nlist), replace=False)
                kmeans = faiss.Kmeans(self.dimensions, nlist, niter=10, spherical=True, seed=0)
                kmeans.train(unit_rows(self._maps["int8"][np.sort(sample)]))
                centroids = kmeans.centroids
            self._quantizer = faiss.IndexFlatIP(self.dimensions)
            self._quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            self._faiss = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.dimensions), self.dimensions, len(centroids))
            self._faiss.is_trained = True
        else:
            self._faiss = faiss.IndexBinaryFlat(self.dimensions)
        self._indexed = 0
        self._index_new_rows()
        self._save_lists()

    def _index_new_rows(self) -> None:
        """Add the committed rows that the first stage does not hold yet (IVF: assigned to their lists)."""
        import faiss

        start, stop = self._indexed, self._count
        if stop <= start:
            return
        codes = np.ascontiguousarray(self._maps["binary"][start:stop])
        if self._quantizer is None:
            self._faiss.add(codes)
        else:
            known = self._lists[start:stop]
            fresh = [self._quantizer.search(unit_rows(self._maps["int8"][i : min(i + 50_000, stop)]), 1)[1][:, 0]
                     for i in range(start + len(known), stop, 50_000)]
            lists = np.ascontiguousarray(np.concatenate([known, *fresh]), dtype=np.int64)
            self._lists = np.concatenate([self._lists[:start], lists.astype(np.int32)])  # for the cache file
            rows = np.arange(start, stop, dtype=np.int64)  # kept alive while faiss reads them
            self._faiss.add_core(stop - start, faiss.swig_ptr(codes), faiss.swig_ptr(rows), faiss.swig_ptr(lists))
        self._indexed = stop

    def _save_lists(self) -> None:
        """Keep the IVF centroids and row lists (atomically: the cache is complete or absent)."""
        if self._quantizer is None or self._saved_lists >= len(self._lists):
            return
        tmp = self.path / (IVF_FILE + ".tmp.npz")
        np.savez(tmp, centroids=self._quantizer.reconstruct_n(0, self._quantizer.ntotal),
                 lists=self._lists, generation=self._generation)
        os.replace(tmp, self.path / IVF_FILE)
        self._saved_lists = len(self._lists)

    def _data_version(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def _sync(self) -> None:
        """Pick up commits made by other processes since we last looked."""
        if self._data_version() != self._version:
            self._load()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across threads and processes; state refreshed before writing."""
        with self._lock, open(self.path / "LOCK", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._sync()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rows_of(self, column: str, values: list) -> list[int]:
        rows: list[int] = []
        for part in _chunks(values):
            marks = ",".join("?" * len(part))
            rows += [r for (r,) in self._conn.execute(f"SELECT row FROM items WHERE {column} IN ({marks})", part)]
        return rows

    # ---- writing ------------------------------------------------------------------------------
    def _append(self, batch: Batch) -> None:
        """Write the batch's vectors after the committed rows, durably (not yet visible)."""
        arrays = {"binary": batch.binary, "int8": batch.int8, "float": batch.floats}
        for precision in self._precisions():
            with open(self._file(precision), "ab") as f:  # create if missing
                pass
            with open(self._file(precision), "r+b") as f:
                offset = self._count * self._row_bytes(precision)
                f.truncate(offset)  # drop any tail a killed writer left behind
                f.seek(offset)
                f.write(np.ascontiguousarray(arrays[precision], dtype=PRECISIONS[precision]).tobytes())
                f.flush()
                os.fsync(f.fileno())

    def _write(self, batch: Batch, replace: bool) -> None:
        with self._writing():
            existing = self._rows_of("id", batch.ids)
            if existing and not replace:
                taken = [i for (i,) in self._conn.execute(
                    f"SELECT id FROM items WHERE row IN ({','.join('?' * min(len(existing), 5))})", existing[:5])]
                raise ValueError(f"{len(existing)} id(s) already in the index (e.g. {', '.join(taken)}); "
                                 "use upsert to replace them")
            self._append(batch)
            start = self._count
            rows = [(start + j, i, t, json.dumps(m, ensure_ascii=False), d, p) for j, (i, t, m, d, p) in
                    enumerate(zip(batch.ids, batch.texts, batch.metadata, batch.doc_ids, batch.positions))]
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for part in _chunks(existing):
                    conn.execute(f"DELETE FROM items WHERE row IN ({','.join('?' * len(part))})", part)
                conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", rows)
                conn.execute("UPDATE manifest SET value = ? WHERE key = 'count'", (str(start + len(rows)),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._count = start + len(rows)
            self._maps = {p: self._map(p) for p in self._precisions()}
            self._live = np.concatenate([self._live, np.ones(len(rows), dtype=bool)])
            self._live[existing] = False
            self._index_new_rows()
            self._version = self._data_version()

    def _remove_rows(self, rows: list[int]) -> int:
        if not rows:
            return 0
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for part in _chunks(rows):
                conn.execute(f"DELETE FROM items WHERE row IN ({','.join('?' * len(part))})", part)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._live[rows] = False
        self._version = self._data_version()
        return len(rows)

    def _delete(self, ids: list[str]) -> int:
        with self._writing():
            return self._remove_rows(self._rows_of("id", ids))

    def _delete_documents(self, doc_ids: list[str]) -> int:
        with self._writing():
            return self._remove_rows(self._rows_of("doc_id", doc_ids))

    def compact(self) -> int:
        """Rewrite the vector files without tombstones (new generation); returns rows dropped."""
        with self._writing():
            live = np.flatnonzero(self._live)
            dropped = self._count - len(live)
            if dropped == 0:
                return 0
            old, new = self._generation, self._generation + 1
            for stale in self.path.glob("vectors.*"):  # left by a compaction that was killed
                if not stale.name.startswith(f"vectors.{old}."):
                    stale.unlink()
            for precision in self._precisions():
                with open(self._file(precision, new), "wb") as f:
                    for part in _chunks(live.tolist(), 65536):
                        f.write(np.ascontiguousarray(self._maps[precision][part]).tobytes())
                    f.flush()
                    os.fsync(f.fileno())
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(ITEMS.format(name="items_new"))
                conn.execute("INSERT INTO items_new SELECT ROW_NUMBER() OVER (ORDER BY row) - 1, id, text, "
                             "metadata, doc_id, position FROM items ORDER BY row")
                conn.execute("DROP TABLE items")
                conn.execute("ALTER TABLE items_new RENAME TO items")
                conn.execute("CREATE INDEX items_doc ON items(doc_id)")
                conn.execute("UPDATE manifest SET value = ? WHERE key = 'count'", (str(len(live)),))
                conn.execute("UPDATE manifest SET value = ? WHERE key = 'generation'", (str(new),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                for precision in self._precisions():
                    self._file(precision, new).unlink(missing_ok=True)
                raise
            self._load()
            for precision in self._precisions():
                self._file(precision, old).unlink(missing_ok=True)
            return dropped

    # ---- searching ----------------------------------------------------------------------------
    def _allowed(self, where: dict[str, Any]) -> np.ndarray | None:
        """Mask of rows a search may return (live, matching ``where``); ``None`` = every row."""
        if not where:
            return None if self._live.all() else self._live
        clauses, params = [], []
        for key, value in where.items():
            path = f'$."{key}"'
            if value is None:
                clauses.append("json_type(metadata, ?) = 'null'")
                params.append(path)
            else:
                clauses.append("json_type(metadata, ?) = ? AND json_extract(metadata, ?) = ?")
                kind = "text" if isinstance(value, str) else ("true" if value is True else "false") \
                    if isinstance(value, bool) else ("integer" if isinstance(value, int) else "real")
                params += [path, kind, path, value]
        mask = np.zeros(self._count, dtype=bool)
        rows = [r for (r,) in self._conn.execute(f"SELECT row FROM items WHERE {' AND '.join(clauses)}", params)]
        mask[rows] = True
        return mask

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            self._sync()
            yield

    def _first_stage(self, binary: np.ndarray, dense: np.ndarray, n: int, where: dict[str, Any]) -> list[np.ndarray]:
        import faiss

        if self._count == 0:
            return [np.zeros(0, np.int64) for _ in binary]
        allowed = self._allowed(where)
        n = min(n, self._count)
        binary = np.ascontiguousarray(binary)
        if isinstance(self._faiss, faiss.IndexBinaryFlat):
            params = None
            if allowed is not None:
                bitmap = np.packbits(allowed, bitorder="little")
                params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(self._count, faiss.swig_ptr(bitmap)))
            return list(self._faiss.search(binary, n, params=params)[1])
        # IVF: faiss has no selector for binary IVF, so over-fetch and drop disallowed rows; a query
        # left short (a selective filter) gets an exact Hamming search over the allowed rows instead
        self._faiss.nprobe = nprobe = min(self.nprobe, self._faiss.nlist)
        probe = self._quantizer.search(unit_rows(dense), nprobe)[1]
        fetch = n if allowed is None else min(self._count, 2 * n)
        found = self._faiss.search_preassigned(binary, fetch, probe, None)[1]
        if allowed is None:
            return list(found)
        subset = np.flatnonzero(allowed)
        out = []
        for q, rows in zip(binary, found):
            rows = rows[rows >= 0]
            rows = rows[allowed[rows]][:n]
            if len(rows) < min(n, len(subset)):
                _, nearest = faiss.knn_hamming(q[None, :], np.ascontiguousarray(self._maps["binary"][subset]),
                                               min(n, len(subset)))
                rows = subset[nearest[0]]
            out.append(rows)
        return out

    def _codes(self, rows: np.ndarray, precision: str) -> np.ndarray:
        return self._maps[precision][np.asarray(rows)]

    def _fetch(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return self._fetch_many([rows], [scores])[0]

    def _fetch_many(self, rows: list[np.ndarray], scores: list[np.ndarray]) -> list[list[Hit]]:
        keys = sorted({int(r) for part in rows for r in part})
        found = {}
        for part in _chunks(keys):
            for row, id_, text, meta, doc, pos in self._conn.execute(
                    f"SELECT row, id, text, metadata, doc_id, position FROM items WHERE row IN "
                    f"({','.join('?' * len(part))})", part):
                found[row] = (id_, text, meta, doc, pos)
        return [[Hit(found[r][0], float(s), found[r][1], json.loads(found[r][2]), *found[r][3:])
                 for r, s in zip(map(int, part), sc) if r in found] for part, sc in zip(rows, scores)]

    # ---- facts --------------------------------------------------------------------------------
    def get(self, ids: list[str], precision: str = "int8") -> dict[str, np.ndarray]:
        """The stored vectors of ``ids`` (those present) in ``binary``, ``int8`` or ``float``."""
        if precision not in self._maps:
            raise ValueError(f"this index stores {', '.join(self._maps)} vectors, not {precision!r}")
        with self._lock:
            self._sync()
            out = {}
            for part in _chunks(list(ids)):
                for row, id_ in self._conn.execute(
                        f"SELECT row, id FROM items WHERE id IN ({','.join('?' * len(part))})", part):
                    out[id_] = np.array(self._maps[precision][row])
            return out

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return int(self._live.sum())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._sync()
            files = [self.path / DB] + [self._file(p) for p in self._precisions()]
            disk = sum(f.stat().st_size for f in files if f.exists())
            docs = self._conn.execute("SELECT COUNT(DISTINCT doc_id) FROM items").fetchone()[0]
            return {**self.info(), "backend": "embedded", "path": str(self.path), "items": int(self._live.sum()),
                    "documents": docs, "vector_rows": self._count, "tombstones": int(self._count - self._live.sum()),
                    "bytes_per_vector": {p: self._row_bytes(p) for p in self._precisions()},
                    "search_structure_bytes_per_vector": self._structure_bytes(),
                    "first_stage": self.first_stage, "first_stage_index": type(self._faiss).__name__,
                    "nprobe": self.nprobe if self._quantizer is not None else None, "disk_bytes": disk}

    def _structure_bytes(self) -> float:
        """In-memory bytes per vector of the first stage: codes; IVF adds faiss's 8-byte row id, the row's
        4-byte list number (kept for the cache file) and its share of the float32 centroids."""
        code = self._row_bytes("binary")
        if self._quantizer is None:
            return code
        return round(code + 8 + 4 + 4 * self.dimensions * self._quantizer.ntotal / max(self._count, 1), 1)

    def close(self) -> None:
        with self._lock:
            self._save_lists()
            self._maps = {}
            self._conn.close()
