"""The embedded, persistent index: memory-mapped vector files + SQLite, in one directory.

Layout of an index directory::

    index.sqlite          manifest (facts and their checksum; committed row count, generation, commit
                          number), items (row, id, text, metadata JSON, doc_id, position, checksum) and
                          blocks (an xxh3 hash per 128 rows of each vector file, per generation)
    HEAD                  the last acknowledged commit number (written after each commit)
    vectors.<gen>.binary  packed sign bits, dims/8 bytes per row   (first stage, Hamming)
    vectors.<gen>.int8    int8 codes, dims bytes per row           (rescoring, cosine)
    vectors.<gen>.float32 float32, 4·dims bytes per row            (only with store_float)
    ivf.npz               IVF centroids and each row's list (a cache; only with first_stage="ivf")

Crash safety: an add appends its rows to each vector file *after* the committed row count
(truncating any tail a killed writer left), fsyncs them, and only then commits the items, the
blocks' hashes and the new count in one SQLite transaction (WAL, synchronous=FULL). Deletes and
upserts leave tombstones (vector rows without an item); :meth:`EmbeddedIndex.compact` rewrites the
files without them under a new generation.

Consistent reads: a search runs inside one SQLite read transaction (a snapshot), and the vector
files it maps are those of that snapshot's generation: a compaction commits the new generation
before it removes the old files, and removes them only when no process is between reading the
manifest and mapping them (a shared lock), so a reader never sees a half-made generation.

Integrity: opening checks the facts' checksum, the row counts against file sizes, block and item
tables, the binary codes in full (they are loaded anyway) and that ``HEAD`` is not ahead of the
database (a lost ``index.sqlite-wal``). The larger int8 / float files are verified lazily, each
128-row block when a search first touches it, and each hit's stored fields are checked against its
vector; :meth:`EmbeddedIndex.check` verifies everything. Damage is an :class:`IndexDamagedError`.

The first stage is an exact Hamming search with faiss ``IndexBinaryFlat`` over the binary codes,
restricted to live (and filter-matching) rows by a bitmap, or an inverted file: rows are partitioned
by cosine to centroids trained on the int8 codes (spherical k-means), each list holds binary codes,
and a query scans the codes of its ``nprobe`` nearest lists. Rescoring gathers the candidates' int8
codes for several queries at once and takes their dot products with one int8 matrix product.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pplx_embed.atomic import atomic_path
from pplx_embed.errors import InputError
from pplx_embed.index.rescore import BLOCK_VALUES
from pplx_embed.index.store import (
    Batch,
    Hit,
    IndexDamagedError,
    IndexNotFoundError,
    VectorStore,
    new_store_shape,
    unit_rows,
)

FORMAT = "pplx-embed-index/2"
DB = "index.sqlite"
HEAD = "HEAD"
PRECISIONS = {"binary": np.uint8, "int8": np.int8, "float": np.float32}
SUFFIX = {"binary": "binary", "int8": "int8", "float": "float32"}
FIRST_STAGES = ("flat", "ivf")
FACTS = ("format", "model", "query_model", "dimensions", "full_dimension", "store_float", "contextual",
         "first_stage", "created")
BLOCK = 128  # rows per hashed block
IVF_MIN_ROWS = 10_000
IVF_FILE = "ivf.npz"
_SQL_VARS = 900  # stay below SQLite's bound-parameter limit
_PARALLEL_QUERIES = 16  # from this many queries on, faiss searches with its thread pool

ITEMS = ("CREATE TABLE {name} (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT, "
         "metadata TEXT NOT NULL DEFAULT '{{}}', doc_id TEXT, position INTEGER, crc INTEGER NOT NULL)")
SCHEMA = f"""
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{ITEMS.format(name="items")};
CREATE INDEX items_doc ON items(doc_id);
CREATE TABLE blocks (generation INTEGER, precision TEXT, block INTEGER, hash INTEGER NOT NULL,
                     PRIMARY KEY (generation, precision, block));
"""


def _chunks(values: list, size: int = _SQL_VARS) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _hash(data: Any) -> int:
    """xxh3-64 of a buffer, as a signed 64-bit SQLite integer."""
    import xxhash

    h = xxhash.xxh3_64_intdigest(memoryview(np.ascontiguousarray(data)).cast("B"))
    return h - (1 << 64) if h >> 63 else h


def _lock_file(path: Path):
    """A file held open for ``flock`` (read-only when the index directory is, e.g. a read-only mount)."""
    try:
        return open(path, "a+b")
    except OSError:
        return open(path, "rb")


@contextmanager
def _faiss_threads(queries: int) -> Iterator[None]:
    """One OpenMP thread for a few queries (a server's single query gains nothing from waking a thread pool
    on busy cores), faiss's default for batches. OpenMP keeps the setting per calling thread."""
    import faiss

    if queries >= _PARALLEL_QUERIES:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _item_checksum(id_: str, text: str | None, metadata: str, doc_id: str | None, position: int | None,
                   int8: np.ndarray) -> int:
    """CRC-32 binding an item's stored fields (``metadata`` as its stored JSON text) to its int8 vector."""
    fields = f"{id_}\x00{text}\x00{metadata}\x00{doc_id}\x00{position}".encode("utf-8", "surrogatepass")
    return zlib.crc32(int8, zlib.crc32(fields))


def _facts_checksum(manifest: dict[str, str]) -> str:
    return str(zlib.crc32(json.dumps({k: manifest.get(k) for k in FACTS}, sort_keys=True).encode()))


class EmbeddedIndex(VectorStore):
    """A persistent index in a directory: crash-safe, snapshot reads, verified; one writer at a time."""

    scans = True

    def __init__(self, path: Path, conn: sqlite3.Connection, manifest: dict[str, str], embedder=None):
        super().__init__(embedder)
        self.path = path
        self._conn = conn
        if manifest.get("checksum") != _facts_checksum(manifest):
            raise IndexDamagedError(f"index {path} is damaged: its manifest facts do not match their checksum")
        try:
            self.model = manifest["model"]
            self.query_model = manifest["query_model"] or None
            self.dimensions = int(manifest["dimensions"])
            self.full_dimension = int(manifest["full_dimension"])
            self.store_float = manifest["store_float"] == "1"
            self.contextual = manifest["contextual"] == "1"
            self.first_stage = manifest["first_stage"]
        except (KeyError, ValueError) as exc:
            raise IndexDamagedError(f"index {path} is damaged: bad manifest ({exc})") from None
        self.nprobe = 16  # IVF lists visited per query (first_stage="ivf")
        self._lock = threading.RLock()
        self._readers = _lock_file(path / "READERS")  # shared while mapping a generation, exclusive to remove one
        self._faiss = self._quantizer = None
        self._indexed, self._generation, self._commit = 0, None, None
        self._hashes: dict[str, np.ndarray] = {}
        self._verified: dict[str, np.ndarray] = {}
        self._maps: dict[str, np.ndarray] = {}
        try:
            self._check_model_args()
            with self._reading():  # loads the state of one snapshot
                self._check_head()
        except BaseException:
            self._readers.close()
            raise

    # ---- create / open ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, model: str, dimensions: int | None = None, *,
               full_dimension: int | None = None, store_float: bool = False, contextual: bool = False,
               first_stage: str | None = None, query_model: str | None = None, embedder=None,
               exist_ok: bool = False) -> EmbeddedIndex:
        """A new empty index directory at ``path`` for ``model`` vectors at ``dimensions``.

        ``first_stage`` is ``flat`` (exact Hamming, the default) or ``ivf`` (faiss ``IndexBinaryIVF``,
        trained the first time the index is opened with at least 10,000 vectors; ``nprobe`` lists per query).
        """
        first_stage = first_stage or "flat"
        if first_stage not in FIRST_STAGES:
            raise InputError(f"the embedded index's first stage is one of {', '.join(FIRST_STAGES)}, "
                             f"got {first_stage!r}")
        path = Path(path)
        if (path / DB).exists():
            if exist_ok:
                return cls.open(path, embedder=embedder)
            raise FileExistsError(f"an index already exists at {path}")
        dimensions, full_dimension = new_store_shape(model, dimensions, full_dimension)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "model": model, "query_model": query_model or "", "dimensions": str(dimensions),
                    "full_dimension": str(full_dimension), "store_float": "1" if store_float else "0",
                    "contextual": "1" if contextual else "0", "first_stage": first_stage,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "count": "0", "generation": "0", "commit": "0"}
        manifest["checksum"] = _facts_checksum(manifest)
        with atomic_path(path / DB) as tmp:  # the index exists only once it is complete
            conn = sqlite3.connect(tmp)
            conn.executescript(SCHEMA)
            conn.executemany("INSERT INTO manifest VALUES (?, ?)", manifest.items())
            conn.commit()
            conn.close()
            tmp.chmod(0o644)  # a temporary file is private; the index is not
        return cls.open(path, embedder=embedder)

    @classmethod
    def open(cls, path: str | os.PathLike, embedder=None) -> EmbeddedIndex:
        """Open the index at ``path``; ``embedder`` (optional) is the index's model or its query model."""
        path = Path(path)
        if not (path / DB).is_file():
            raise IndexNotFoundError(f"no index at {path} (create one with `pplx-embed index create`)")
        conn = sqlite3.connect(path / DB, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            manifest = dict(conn.execute("SELECT key, value FROM manifest"))
            if manifest.get("format") != FORMAT:
                raise IndexDamagedError(f"{path} has index format {manifest.get('format')!r}; expected {FORMAT} "
                                        "(re-create it)")
            return cls(path, conn, manifest, embedder)
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise IndexDamagedError(f"{path} is not a readable pplx-embed index ({exc})") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise IndexDamagedError(f"{path} is not a readable pplx-embed index ({exc})") from None
        except BaseException:
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

    def _damaged(self, what: str) -> IndexDamagedError:
        return IndexDamagedError(f"index {self.path} is damaged: {what} (`pplx-embed index check` verifies it all)")

    def _manifest_state(self) -> tuple[int, int, int]:
        values = dict(self._conn.execute(
            "SELECT key, value FROM manifest WHERE key IN ('count', 'generation', 'commit')"))
        try:
            state = tuple(int(values[key]) for key in ("count", "generation", "commit"))
        except (KeyError, ValueError):
            raise self._damaged(f"bad manifest state {values}") from None
        if min(state) < 0:
            raise self._damaged(f"negative manifest state {values}")
        return state

    def _load(self) -> None:
        """(Re)read the committed state (inside a snapshot, or under the writer lock): counts, maps,
        block hashes, live rows; check what is cheap to check; bring the first stage up to date."""
        count, generation, commit = self._manifest_state()
        rebuild = self._faiss is None or generation != self._generation
        old_hashes, old_verified = (dict(self._hashes), dict(self._verified)) if not rebuild else ({}, {})
        self._count, self._generation, self._commit = count, generation, commit
        n_blocks = -(-count // BLOCK)
        for precision in self._precisions():
            f = self._file(precision)
            size = f.stat().st_size if f.exists() else 0
            if size < count * self._row_bytes(precision):
                raise self._damaged(f"{f.name} holds {size} bytes, fewer than its {count} committed rows need")
        self._maps = {p: self._map(p) for p in self._precisions()}
        for precision in self._precisions():
            got = self._conn.execute("SELECT block, hash FROM blocks WHERE generation = ? AND precision = ? "
                                     "ORDER BY block", (generation, precision)).fetchall()
            hashes = np.array([h for _, h in got], dtype=np.int64)
            if len(got) != n_blocks or (n_blocks and got[-1][0] != n_blocks - 1):
                raise self._damaged(f"{len(got)} block hashes for the {n_blocks} blocks of {precision} vectors")
            verified = np.zeros(n_blocks, dtype=bool)
            if precision in old_hashes:  # blocks already verified whose hash did not change stay verified
                same = min(len(old_hashes[precision]), n_blocks)
                verified[:same] = old_verified[precision][:same] & (old_hashes[precision][:same] == hashes[:same])
            self._hashes[precision], self._verified[precision] = hashes, verified
        if rebuild or not hasattr(self, "_inv_norm"):
            self._inv_norm = np.zeros(count, dtype=np.float32)
        else:
            self._inv_norm = np.concatenate([self._inv_norm[:count], np.zeros(count - len(self._inv_norm[:count]),
                                                                               np.float32)])
        self._verify_blocks("binary", np.arange(n_blocks))  # all of it: the first stage loads every code
        low, high = self._conn.execute("SELECT min(row), max(row) FROM items").fetchone()
        if low is not None and (low < 0 or high >= count):
            raise self._damaged(f"an item row ({low if low < 0 else high}) lies outside the {count} committed rows")
        self._live = np.zeros(count, dtype=bool)
        self._live[np.fromiter((r for (r,) in self._conn.execute("SELECT row FROM items")), dtype=np.int64)] = True
        if rebuild or count < self._indexed:
            self._build_first_stage()
        else:
            self._index_new_rows()

    def _verify_blocks(self, precision: str, blocks: np.ndarray) -> None:
        """Hash the not yet verified ``blocks`` of a vector file against their recorded hashes (int8: and
        keep the rows' inverse norms for rescoring)."""
        verified = self._verified[precision]
        todo = blocks[~verified[blocks]] if len(blocks) else blocks
        data = self._maps[precision]
        for block in todo.tolist():
            rows = data[block * BLOCK : (block + 1) * BLOCK]
            if _hash(rows) != self._hashes[precision][block]:
                raise self._damaged(f"rows {block * BLOCK}-{block * BLOCK + len(rows) - 1} of "
                                    f"{self._file(precision).name} do not match their checksum")
            if precision == "int8":
                norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float32))
                self._inv_norm[block * BLOCK : block * BLOCK + len(rows)] = 1.0 / np.maximum(norms, 1e-12)
            verified[block] = True

    def _verify_rows(self, rows: np.ndarray, precision: str) -> None:
        if len(rows):
            self._verify_blocks(precision, np.unique(np.asarray(rows) // BLOCK))

    def _check_head(self) -> None:
        """``HEAD`` (the last acknowledged commit) must not be ahead of the database."""
        try:
            head = json.loads((self.path / HEAD).read_text())["commit"]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):
            raise self._damaged(f"{HEAD} is not readable") from None
        if head > self._commit:
            raise self._damaged(f"it acknowledged commit {head} but {DB} holds only commit {self._commit} "
                                f"(was {DB}-wal deleted or an older {DB} restored?)")

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
            centroids = None
            try:  # a cache: when it is unreadable the centroids are trained again
                with np.load(cache) as saved:
                    centroids = saved["centroids"].astype(np.float32)
                    if int(saved["generation"]) == self._generation and centroids.shape[1] == self.dimensions:
                        self._lists = saved["lists"][: self._count].astype(np.int32)
                        self._saved_lists = len(saved["lists"])
            except (OSError, ValueError, KeyError, IndexError, zlib.error) as exc:
                if not isinstance(exc, FileNotFoundError):
                    centroids = None
            if centroids is None or centroids.ndim != 2 or centroids.shape[1] != self.dimensions:
                nlist = int(2 * np.sqrt(self._count))
                sample = np.sort(np.random.default_rng(0).choice(self._count, min(self._count, 40 * nlist),
                                                                 replace=False))
                self._verify_rows(sample, "int8")
                kmeans = faiss.Kmeans(self.dimensions, nlist, niter=10, spherical=True, seed=0)
                kmeans.train(unit_rows(self._maps["int8"][sample]))
                centroids, self._lists = kmeans.centroids, np.zeros(0, np.int32)
            centroids = np.ascontiguousarray(centroids, dtype=np.float32)
            self._quantizer = faiss.IndexFlatIP(self.dimensions)
            self._quantizer.add(centroids)
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
            fresh = []
            for i in range(start + len(known), stop, 50_000):
                part = slice(i, min(i + 50_000, stop))
                self._verify_rows(np.arange(part.start, part.stop), "int8")
                fresh.append(self._quantizer.search(unit_rows(self._maps["int8"][part]), 1)[1][:, 0])
            lists = np.ascontiguousarray(np.concatenate([known, *fresh]), dtype=np.int64)
            self._lists = np.concatenate([self._lists[:start], lists.astype(np.int32)])  # for the cache file
            rows = np.arange(start, stop, dtype=np.int64)  # kept alive while faiss reads them
            self._faiss.add_core(stop - start, faiss.swig_ptr(codes), faiss.swig_ptr(rows), faiss.swig_ptr(lists))
        self._indexed = stop

    def _save_lists(self) -> None:
        """Keep the IVF centroids and row lists (atomically: the cache is complete or absent)."""
        if self._quantizer is None or self._saved_lists >= len(self._lists):
            return
        with atomic_path(self.path / IVF_FILE) as tmp, open(tmp, "wb") as f:
            np.savez(f, centroids=self._quantizer.reconstruct_n(0, self._quantizer.ntotal),
                     lists=self._lists, generation=self._generation)
        self._saved_lists = len(self._lists)

    def _refresh(self) -> None:
        """Pick up commits made by other processes since we last looked."""
        commit = self._conn.execute("SELECT value FROM manifest WHERE key = 'commit'").fetchone()
        if commit is None or self._commit is None or int(commit[0]) != self._commit:
            self._load()

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """A damaged database file is a one-line :class:`IndexDamagedError`, not a traceback."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise InputError(f"cannot write to {self.path}: {exc}; nothing was changed") from None
            raise
        except sqlite3.DatabaseError as exc:
            raise self._damaged(f"{DB}: {exc}") from None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across threads and processes; state refreshed before writing."""
        with self._lock, self._sqlite_errors(), open(self.path / "LOCK", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._refresh()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One committed generation for the whole block: a SQLite read transaction (snapshot), begun and
        mapped under the shared lock that keeps a compaction from removing that generation's files meanwhile."""
        with self._lock, self._sqlite_errors():
            fcntl.flock(self._readers, fcntl.LOCK_SH)
            try:
                self._conn.execute("BEGIN")
                try:
                    self._refresh()
                except BaseException:
                    self._conn.execute("COMMIT")
                    raise
            finally:
                fcntl.flock(self._readers, fcntl.LOCK_UN)
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that rolls back on failure, with its own error, not the rollback's."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _acknowledge(self, commit: int) -> None:
        """Record ``commit`` as acknowledged: an open that finds the database behind it reports the loss."""
        self._commit = commit
        with atomic_path(self.path / HEAD) as tmp:
            tmp.write_text(json.dumps({"commit": commit, "generation": self._generation, "count": self._count}))
            tmp.chmod(0o644)  # readable like the other files of the index

    def _rows_of(self, column: str, values: list) -> list[int]:
        rows: list[int] = []
        for part in _chunks(values):
            marks = ",".join("?" * len(part))
            rows += [r for (r,) in self._conn.execute(f"SELECT row FROM items WHERE {column} IN ({marks})", part)]
        return rows

    # ---- writing ------------------------------------------------------------------------------
    def _append(self, batch: Batch) -> list[tuple[int, str, int, int]]:
        """Write the batch's vectors after the committed rows, durably (not yet visible); → the hashes of
        the blocks they fill, as ``blocks`` rows."""
        arrays = {"binary": batch.binary, "int8": batch.int8, "float": batch.floats}
        first = self._count // BLOCK
        hashes = []
        for precision in self._precisions():
            new = np.ascontiguousarray(arrays[precision], dtype=PRECISIONS[precision])
            self._verify_blocks(precision, np.arange(first, len(self._hashes[precision])))  # the partial block
            rows = np.concatenate([np.asarray(self._maps[precision][first * BLOCK :]), new])
            hashes += [(self._generation, precision, first + i, _hash(rows[i * BLOCK : (i + 1) * BLOCK]))
                       for i in range(-(-len(rows) // BLOCK))]
            path = self._file(precision)
            try:
                with open(path, "ab"):  # create if missing
                    pass
                with open(path, "r+b") as f:
                    offset = self._count * self._row_bytes(precision)
                    f.truncate(offset)  # drop any tail a killed writer left behind
                    f.seek(offset)
                    f.write(new.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
                    raise InputError(f"cannot write {path}: {exc.strerror}; the batch was not added") from None
                raise
        return hashes

    def _write(self, batch: Batch, replace: bool) -> None:
        with self._writing():
            existing = self._rows_of("id", batch.ids)
            if existing and not replace:
                taken = [i for (i,) in self._conn.execute(
                    f"SELECT id FROM items WHERE row IN ({','.join('?' * min(len(existing), 5))})", existing[:5])]
                raise InputError(f"{len(existing)} id(s) already in the index (e.g. {', '.join(taken)}); "
                                 "use upsert to replace them")
            hashes = self._append(batch)
            start = self._count
            rows = []
            for j, (i, t, m, d, p) in enumerate(zip(batch.ids, batch.texts, batch.metadata, batch.doc_ids,
                                                    batch.positions)):
                meta = json.dumps(m, ensure_ascii=False)
                rows.append((start + j, i, t, meta, d, p, _item_checksum(i, t, meta, d, p, batch.int8[j])))
            with self._transaction() as conn:
                for part in _chunks(existing):
                    conn.execute(f"DELETE FROM items WHERE row IN ({','.join('?' * len(part))})", part)
                conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                conn.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?)", hashes)
                conn.execute("UPDATE manifest SET value = ? WHERE key = 'count'", (str(start + len(rows)),))
                conn.execute("UPDATE manifest SET value = ? WHERE key = 'commit'", (str(self._commit + 1),))
            self._appended(start, len(rows), existing, hashes)

    def _appended(self, start: int, n: int, replaced: list[int], hashes: list[tuple[int, str, int, int]]) -> None:
        """Take in our own committed append without rereading the index (new blocks verify on first use)."""
        self._count, first = start + n, start // BLOCK
        self._maps = {p: self._map(p) for p in self._precisions()}
        for precision in self._precisions():
            new = np.array([h for _, p, _, h in hashes if p == precision], dtype=np.int64)
            self._hashes[precision] = np.concatenate([self._hashes[precision][:first], new])
            self._verified[precision] = np.concatenate([self._verified[precision][:first], np.zeros(len(new), bool)])
        self._inv_norm = np.concatenate([self._inv_norm[:start], np.zeros(n, np.float32)])
        self._verify_blocks("binary", np.arange(first, len(self._hashes["binary"])))
        self._live = np.concatenate([self._live, np.ones(n, dtype=bool)])
        self._live[replaced] = False
        self._index_new_rows()
        self._acknowledge(self._commit + 1)

    def _remove_rows(self, rows: list[int]) -> int:
        if not rows:
            return 0
        with self._transaction() as conn:
            for part in _chunks(rows):
                conn.execute(f"DELETE FROM items WHERE row IN ({','.join('?' * len(part))})", part)
            conn.execute("UPDATE manifest SET value = ? WHERE key = 'commit'", (str(self._commit + 1),))
        self._live[rows] = False
        self._acknowledge(self._commit + 1)
        return len(rows)

    def _delete(self, ids: list[str]) -> int:
        with self._writing():
            return self._remove_rows(self._rows_of("id", ids))

    def _delete_documents(self, doc_ids: list[str]) -> int:
        with self._writing():
            return self._remove_rows(self._rows_of("doc_id", doc_ids))

    def compact(self) -> int:
        """Rewrite the vector files without tombstones (new generation); returns rows dropped.

        Every block is verified first (a compaction never launders damage into new checksums). Readers
        keep their snapshot: the old files go only after the commit, once no reader is mapping them.
        """
        with self._writing():
            live = np.flatnonzero(self._live)
            dropped = self._count - len(live)
            if dropped == 0:
                return 0
            old, new = self._generation, self._generation + 1
            for stale in self.path.glob("vectors.*"):  # left by a compaction that was killed
                if not stale.name.startswith(f"vectors.{old}."):
                    stale.unlink()
            hashes = []
            for precision in self._precisions():
                self._verify_blocks(precision, np.arange(len(self._hashes[precision])))
                with open(self._file(precision, new), "wb") as f:
                    for start in range(0, len(live), 64 * BLOCK):
                        rows = np.ascontiguousarray(self._maps[precision][live[start : start + 64 * BLOCK]])
                        hashes += [(new, precision, (start + i) // BLOCK, _hash(rows[i : i + BLOCK]))
                                   for i in range(0, len(rows), BLOCK)]
                        f.write(rows.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
            try:
                with self._transaction() as conn:
                    conn.execute(ITEMS.format(name="items_new"))
                    conn.execute("INSERT INTO items_new SELECT ROW_NUMBER() OVER (ORDER BY row) - 1, id, text, "
                                 "metadata, doc_id, position, crc FROM items ORDER BY row")
                    conn.execute("DROP TABLE items")
                    conn.execute("ALTER TABLE items_new RENAME TO items")
                    conn.execute("CREATE INDEX items_doc ON items(doc_id)")
                    conn.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", hashes)
                    conn.execute("DELETE FROM blocks WHERE generation = ?", (old,))
                    for key, value in (("count", len(live)), ("generation", new), ("commit", self._commit + 1)):
                        conn.execute("UPDATE manifest SET value = ? WHERE key = ?", (str(value), key))
            except BaseException:
                for precision in self._precisions():
                    self._file(precision, new).unlink(missing_ok=True)
                raise
            self._load()
            self._acknowledge(self._commit)
            fcntl.flock(self._readers, fcntl.LOCK_EX)  # no reader is between its snapshot and its maps
            try:
                for precision in self._precisions():
                    self._file(precision, old).unlink(missing_ok=True)
            finally:
                fcntl.flock(self._readers, fcntl.LOCK_UN)
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
            elif isinstance(value, (str, bool)):
                clauses.append("json_type(metadata, ?) = ? AND json_extract(metadata, ?) = ?")
                params += [path, "text" if isinstance(value, str) else str(value).lower(), path, value]
            else:  # numbers compare as numbers: 3 matches a stored 3 or 3.0
                clauses.append("json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?")
                params += [path, path, value]
        mask = np.zeros(self._count, dtype=bool)
        rows = [r for (r,) in self._conn.execute(f"SELECT row FROM items WHERE {' AND '.join(clauses)}", params)]
        mask[rows] = True
        return mask

    def _scan(self, queries: np.ndarray, precision: str, n: int,
              where: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every live row passing ``where``, block by block (each verified before it is scored), at ``precision``
        on the queries' width: Hamming by faiss for ``binary``, cosine for ``int8`` / ``float``; the best ``n``
        of each query kept as the blocks go, best first. Memory: ~1M values of codes and of scores at a time."""
        allowed = self._allowed(where) if self._count else np.zeros(0, dtype=bool)
        rows = np.arange(self._count) if allowed is None else np.flatnonzero(allowed)
        n = min(n, len(rows))
        if n == 0:
            return [np.zeros(0, np.int64)] * len(queries), [np.zeros(0, np.float32)] * len(queries)
        per = max(1, BLOCK_VALUES // max(8 * BLOCK, 2 * n))  # queries scored together (their best n kept)
        out_rows, out_scores = [], []
        for start in range(0, len(queries), per):
            found = self._scan_queries(queries[start : start + per], precision, n, rows)
            out_rows += found[0]
            out_scores += found[1]
        return out_rows, out_scores

    def _scan_queries(self, queries: np.ndarray, precision: str, n: int,
                      rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        import faiss

        nq, width = queries.shape
        best_rows, best = np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32)
        unit = unit_rows(queries) if precision != "binary" else np.ascontiguousarray(queries)
        step = max(BLOCK, BLOCK_VALUES // max(width, nq))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            self._verify_rows(part, precision)
            codes = np.ascontiguousarray(np.take(self._maps[precision], part, axis=0)[:, :width])
            if precision == "binary":
                distances, found = faiss.knn_hamming(unit, codes, min(n, len(part)))
                scores, found = 1.0 - 2.0 * distances.astype(np.float32) / (8 * width), part[found]
            else:
                scores = unit @ unit_rows(codes).T
                found = np.broadcast_to(part, scores.shape)
            best_rows, best = np.hstack([best_rows, found]), np.hstack([best, scores.astype(np.float32)])
            if best.shape[1] > n:
                keep = np.argpartition(-best, n - 1, axis=1)[:, :n]
                best_rows, best = np.take_along_axis(best_rows, keep, 1), np.take_along_axis(best, keep, 1)
        order = [np.lexsort((r, -s)) for r, s in zip(best_rows, best)]
        return [r[o] for r, o in zip(best_rows, order)], [s[o] for s, o in zip(best, order)]

    def _rows_of_ids(self, ids: list[str]) -> np.ndarray:
        return np.array(self._rows_of("id", ids), dtype=np.int64)

    def _gather(self, rows: np.ndarray, precision: str) -> np.ndarray:
        """Stored vectors of row numbers: one gather from the memory map, blocks verified on first touch."""
        self._verify_rows(rows, precision)
        return np.take(self._maps[precision], rows, axis=0)

    def _inv_norms(self):
        return lambda rows: self._inv_norm[rows]  # kept when int8 blocks were verified

    def _first_stage(self, binary: np.ndarray, dense: np.ndarray, n: int,
                     where: dict[str, Any]) -> np.ndarray | list[np.ndarray]:
        if self._count == 0:
            return [np.zeros(0, np.int64) for _ in binary]
        with _faiss_threads(len(binary)):
            return self._nearest(binary, dense, n, where)

    def _nearest(self, binary: np.ndarray, dense: np.ndarray, n: int,
                 where: dict[str, Any]) -> np.ndarray | list[np.ndarray]:
        import faiss

        allowed = self._allowed(where)
        n = min(n, self._count)
        binary = np.ascontiguousarray(binary)
        if isinstance(self._faiss, faiss.IndexBinaryFlat):
            params = None
            if allowed is not None:
                bitmap = np.packbits(allowed, bitorder="little")
                params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(self._count, faiss.swig_ptr(bitmap)))
            return self._faiss.search(binary, n, params=params)[1]
        # IVF: faiss has no selector for binary IVF, so over-fetch and drop disallowed rows; a query
        # left short (a selective filter) gets an exact Hamming search over the allowed rows instead
        self._faiss.nprobe = nprobe = min(self.nprobe, self._faiss.nlist)
        probe = self._quantizer.search(unit_rows(dense), nprobe)[1]
        fetch = n if allowed is None else min(self._count, 2 * n)
        found = self._faiss.search_preassigned(binary, fetch, probe, None)[1]
        if allowed is None:
            return found
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
        rows = np.asarray(rows)
        self._verify_rows(rows, precision)
        return self._maps[precision][rows]

    def _fetch(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return self._fetch_many([rows], [scores])[0]

    def _fetch_many(self, rows: list[np.ndarray], scores: list[np.ndarray]) -> list[list[Hit]]:
        """The hits' items in one query per 900 rows, each checked against its stored checksum."""
        keys = sorted({int(r) for part in rows for r in part})
        found = {}
        for part in _chunks(keys):
            gathered = np.asarray(np.take(self._maps["int8"], part, axis=0))  # one gather, not a memmap per row
            codes = {row: gathered[i] for i, row in enumerate(part)}
            for row, id_, text, meta, doc, pos, crc in self._conn.execute(
                    f"SELECT row, id, text, metadata, doc_id, position, crc FROM items WHERE row IN "
                    f"({','.join('?' * len(part))})", part):
                if _item_checksum(id_, text, meta, doc, pos, codes[row]) != crc:
                    raise self._damaged(f"item row {row} ({str(id_)[:80]!r}) does not match its checksum")
                found[row] = (id_, text, json.loads(meta), doc, pos)
        return [[Hit(found[r][0], float(s), found[r][1], found[r][2], *found[r][3:])
                 for r, s in zip(map(int, part), sc) if r in found] for part, sc in zip(rows, scores)]

    # ---- facts --------------------------------------------------------------------------------
    def get(self, ids: list[str], precision: str = "int8") -> dict[str, np.ndarray]:
        """The stored vectors of ``ids`` (those present) in ``binary``, ``int8`` or ``float``."""
        if precision not in self._precisions():
            raise InputError(f"this index stores {', '.join(self._precisions())} vectors, not {precision!r}")
        with self._reading():
            out = {}
            for part in _chunks(list(ids)):
                for row, id_ in self._conn.execute(
                        f"SELECT row, id FROM items WHERE id IN ({','.join('?' * len(part))})", part):
                    out[id_] = np.array(self._codes(np.array([row]), precision)[0])
            return out

    def check(self) -> dict[str, Any]:
        """Verify everything: every block of every vector file, every item against its checksum and vector,
        ``HEAD``. Raises :class:`IndexDamagedError` at the first problem; → what was verified."""
        with self._reading():
            for precision in self._precisions():
                self._verify_blocks(precision, np.arange(len(self._hashes[precision])))
            codes, items = self._maps["int8"], 0
            for row, id_, text, meta, doc, pos, crc in self._conn.execute(
                    "SELECT row, id, text, metadata, doc_id, position, crc FROM items"):
                if _item_checksum(id_, text, meta, doc, pos, codes[row]) != crc:
                    raise self._damaged(f"item row {row} ({str(id_)[:80]!r}) does not match its checksum")
                items += 1
            integrity = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if integrity != "ok":
                raise self._damaged(f"{DB}: {integrity}")
            self._check_head()
            return {"path": str(self.path), "ok": True, "items": items, "vector_rows": self._count,
                    "generation": self._generation, "commit": self._commit,
                    "blocks_verified": {p: len(self._hashes[p]) for p in self._precisions()}}

    def __len__(self) -> int:
        with self._reading():
            return int(self._live.sum())

    def stats(self) -> dict[str, Any]:
        with self._reading():
            files = [self.path / DB] + [self._file(p) for p in self._precisions()]
            disk = sum(f.stat().st_size for f in files if f.exists())
            docs = self._conn.execute("SELECT COUNT(DISTINCT doc_id) FROM items").fetchone()[0]
            return {**self.info(), "backend": "embedded", "path": str(self.path), "items": int(self._live.sum()),
                    "documents": docs, "vector_rows": self._count, "tombstones": int(self._count - self._live.sum()),
                    "generation": self._generation, "commit": self._commit,
                    "bytes_per_vector": {p: self._row_bytes(p) for p in self._precisions()},
                    "search_structure_bytes_per_vector": self._structure_bytes(),
                    "first_stage": self.first_stage, "first_stage_index": type(self._faiss).__name__,
                    "nprobe": self.nprobe if self._quantizer is not None else None, "disk_bytes": disk}

    def _structure_bytes(self) -> float:
        """In-memory bytes per vector of the search: codes and the 4-byte inverse norm kept for rescoring; IVF
        adds faiss's 8-byte row id, the row's 4-byte list number (for the cache file) and its share of the
        float32 centroids."""
        code = self._row_bytes("binary") + 4
        if self._quantizer is None:
            return code
        return round(code + 8 + 4 + 4 * self.dimensions * self._quantizer.ntotal / max(self._count, 1), 1)

    def close(self) -> None:
        with self._lock:
            if self._maps:
                self._save_lists()
            self._maps = {}
            self._conn.close()
            self._readers.close()
