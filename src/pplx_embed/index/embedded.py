"""The embedded, persistent index: memory-mapped vector files + SQLite, in one directory.

Layout of an index directory::

    index.sqlite          manifest (facts and their checksum; committed row count, generation, commit
                          number), items (row, id, text, metadata JSON, doc_id, position, checksum) and
                          blocks (an xxh3 hash per 128 rows of each vector file, per generation)
    HEAD                  the last acknowledged commit number (written after each commit)
    vectors.<gen>.binary  packed sign bits, dims/8 bytes per row   (first stage, Hamming)
    vectors.<gen>.int8    int8 codes, dims bytes per row           (rescoring, cosine)
    vectors.<gen>.float32 float32, 4·dims bytes per row            (only with store_float)
    vectors.<gen>.lists   each row's inverted list, int32          (only in a generation with a coarse stage)
    vectors.<gen>.spill   each row's second list, int32, -1 = none (only in a generation whose partition spills)

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

The first stage is an exact Hamming search with faiss ``IndexBinaryFlat`` over the binary codes, restricted to
live (and filter-matching) rows by a bitmap, or an inverted file: rows are partitioned by cosine to centroids
trained on the int8 codes (spherical k-means), each list holds binary codes, and a query scans the codes of
its ``nprobe`` nearest lists, found by cosine to every centroid or by Hamming distance to the centroids' sign
bits first, then cosine. Which of the two first stages, and how many lists, follows the index's size
(:func:`plan_lists`); :meth:`EmbeddedIndex.compact` trains the coarse stage (centroids, committed in
``index.sqlite`` with their hash, per generation) when the size calls for another one, writes every row's list
in ``vectors.<gen>.lists`` and calibrates the probe on the index's own rows: of the ``nprobe``, ways of finding
lists and spilled shares whose modelled time fits :data:`PROBE_BUDGET_US`, the cheapest that keeps
:data:`PROBE_SHARE` of sample rows' true top 10 in the lists probed, else the one keeping the most (committed
with the coarse stage). A spilling partition lists the share of rows whose second-nearest centroid is most
nearly as close as the nearest in both (``vectors.<gen>.spill``; a query keeps each row once). Rows added later are
assigned to their lists (and spilled by the stored threshold) as they are written. The faiss structures are
built in memory on the first search (a writer that only adds never builds them). Rescoring gathers the
candidates' int8 codes for several queries at once and takes their dot products with one int8 matrix product.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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

FORMAT = "pplx-embed-index/4"
# 2: no trained coarse stages yet, 3: no spill lists yet; the next compaction upgrades (4: earlier versions
# would append rows without their spill lists)
FORMATS = ("pplx-embed-index/2", "pplx-embed-index/3", FORMAT)
DB = "index.sqlite"
HEAD = "HEAD"
PRECISIONS = {"binary": np.uint8, "int8": np.int8, "float": np.float32, "lists": np.int32, "spill": np.int32}
SUFFIX = {"binary": "binary", "int8": "int8", "float": "float32", "lists": "lists", "spill": "spill"}
FIRST_STAGES = ("auto", "flat", "ivf")
FACTS = ("format", "model", "query_model", "dimensions", "full_dimension", "store_float", "contextual",
         "first_stage", "created")
BLOCK = 128  # rows per hashed block
IVF_MIN_ROWS = 10_000  # first_stage="ivf": an inverted file from this size (k-means needs rows)
AUTO_IVF_ROWS = 50_000  # first_stage="auto": an inverted file from this size, an exact scan below (docs/index.md)
# how a query finds its lists (_Coarse.probe): 0 = cosine to every centroid; k > 0 = Hamming to the centroids' sign
# bits, then cosine over k x nprobe. Compaction calibrates both on the index's own rows (_Coarse.calibrate); these
# defaults serve a stage trained by an earlier version until its next compaction
COARSE_RESCORE = 0
NPROBE = 32
# k-means sample: rows per centroid, within a float32 budget. 40 rows per list left most of the n/100 groups of the
# 10M benchmark unseen (2.5 sampled rows per group): their rows scattered over lists, recall@10 0.765 (docs/index.md)
TRAIN_PER_LIST = 128
TRAIN_BYTES = 3 << 30
# the calibration (docs/index.md, "The probe"): exact top 10 of PROBE_QUERIES sample rows among all rows; of the
# probes whose modelled time (probe_cost) fits PROBE_BUDGET_US, the cheapest whose lists hold PROBE_SHARE of them,
# else the one holding the most. PROBE_RULE numbers this rule: a stage calibrated by an earlier one is due again
PROBE_QUERIES = 1000
PROBE_SHARE = 0.99
PROBE_NPROBES = (8, 16, 24, 32, 48, 64, 96, 128)
PROBE_RESCORES = (0, 4, 8, 16)
PROBE_BUDGET_US = 1750  # a little above 32 lists by cosine, 20% spilled, at 10M x 1024: 1,656 µs
PROBE_RULE = 2
# per-query costs of the first stage, µs on one core of a Xeon (AVX-512), measured at 10M rows (docs/index.md)
US_PER_CODE_KB = 0.144  # scanning the probed lists' binary codes
US_PER_CENTROID_KB = 0.0445  # cosine to every centroid (float16 copies)
US_PER_SIGN_KB = 0.075  # Hamming to the centroids' sign bits
US_PER_REFINED = 0.4  # each centroid the sign bits pass on to cosine
SPILL_SHARES = (0.2, 0.4)  # a spilling partition also lists this share of rows, the most ambiguous, in a second list
_READ_BYTES = 32 << 20  # bytes per read of a whole-file pass (verify, index, copy, assign)
_SQL_VARS = 900  # stay below SQLite's bound-parameter limit
_PARALLEL_QUERIES = 16  # from this many queries on, faiss searches with its thread pool

COARSE = ("CREATE TABLE IF NOT EXISTS coarse (generation INTEGER PRIMARY KEY, lists INTEGER NOT NULL, "
          "trained_rows INTEGER NOT NULL, quantizer BLOB NOT NULL, hash INTEGER NOT NULL)")
PROBE = ("CREATE TABLE IF NOT EXISTS probe (generation INTEGER PRIMARY KEY, nprobe INTEGER NOT NULL, "
         "coarse_rescore INTEGER NOT NULL, share REAL NOT NULL, hash INTEGER NOT NULL)")
PROBE_RULE_TABLE = "CREATE TABLE IF NOT EXISTS probe_rule (generation INTEGER PRIMARY KEY, rule INTEGER NOT NULL)"
SPILL = "CREATE TABLE IF NOT EXISTS spill (generation INTEGER PRIMARY KEY, threshold REAL, hash INTEGER NOT NULL)"
ITEMS = ("CREATE TABLE {name} (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT, "
         "metadata TEXT NOT NULL DEFAULT '{{}}', doc_id TEXT, position INTEGER, crc INTEGER NOT NULL)")
SCHEMA = f"""
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{ITEMS.format(name="items")};
CREATE INDEX items_doc ON items(doc_id);
CREATE TABLE blocks (generation INTEGER, precision TEXT, block INTEGER, hash INTEGER NOT NULL,
                     PRIMARY KEY (generation, precision, block));
{COARSE};
{PROBE};
{PROBE_RULE_TABLE};
{SPILL};
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


def _disk_error(path: Path, exc: OSError, outcome: str) -> Exception:
    """A full or read-only disk as a one-line :class:`InputError` (other errors as they are)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
        return InputError(f"cannot write {path}: {exc.strerror}; {outcome}")
    return exc


def _facts_checksum(manifest: dict[str, str]) -> str:
    return str(zlib.crc32(json.dumps({k: manifest.get(k) for k in FACTS}, sort_keys=True).encode()))


def plan_lists(rows: int, first_stage: str) -> int:
    """The inverted lists a first stage of ``rows`` rows should have; 0 = an exact flat Hamming scan.

    ``auto`` (the default): exact below 50,000 rows, where scanning every code is as fast as probing lists
    and loses nothing; ``ivf``: from 10,000 rows; ``flat``: never. An inverted file has ``2·√rows`` lists.
    """
    floor = {"auto": AUTO_IVF_ROWS, "ivf": IVF_MIN_ROWS}.get(first_stage)
    return 0 if floor is None or rows < floor else int(2 * math.sqrt(rows))


def train_rows(rows: int, lists: int, dimensions: int) -> int:
    """How many rows k-means trains ``lists`` centroids on: ``TRAIN_PER_LIST`` per list, at most ``TRAIN_BYTES``
    of float32 and at most all ``rows``."""
    return min(rows, TRAIN_PER_LIST * lists, TRAIN_BYTES // (4 * dimensions))


def retrain_due(trained: int, wanted: int, trained_rows: int | None = None, dimensions: int = 0) -> bool:
    """Whether a first stage of ``trained`` lists should be trained again for ``wanted`` (0 = flat): on a change
    of kind, when the right number of lists has doubled or halved (the index grew or shrank 4x), or when its
    k-means saw less than half the sample :func:`train_rows` takes for that many lists (``trained_rows`` of
    ``dimensions``: an index trained by an earlier version)."""
    if not trained or not wanted:
        return trained != wanted
    # (trained / 2)² rows: the size at which plan_lists asks for ``trained`` lists
    undersampled = trained_rows is not None and 2 * trained_rows < train_rows((trained // 2) ** 2, trained, dimensions)
    return not wanted / 2 < trained < 2 * wanted or undersampled


def probe_cost(lists: int, dims: int, rows: int, nprobe: int, rescore: int, spilled: float) -> float:
    """Modelled time (µs, one core) of a query's first stage over ``rows`` rows in ``lists`` lists of ``dims``
    dimensions: finding ``nprobe`` lists (cosine to every float16 centroid, or Hamming to their sign bits, then
    cosine over ``rescore × nprobe``), then scanning their codes (``spilled``: the share of rows listed twice)."""
    if rescore:
        coarse = US_PER_SIGN_KB * lists * dims / 8 / 1024 + US_PER_REFINED * rescore * min(nprobe, lists)
    else:
        coarse = US_PER_CENTROID_KB * lists * dims * 2 / 1024
    return coarse + US_PER_CODE_KB * min(nprobe, lists) * rows * (1 + spilled) / lists * dims / 8 / 1024


@dataclass(frozen=True)
class Probe:
    """How a query visits an inverted file: ``nprobe`` lists, found by ``coarse_rescore`` (:meth:`_Coarse.probe`);
    ``share``: of the calibration rows' true top 10, the share inside the lists so probed; ``rule``: the
    :data:`PROBE_RULE` that chose it (1: before rules were numbered)."""

    nprobe: int
    coarse_rescore: int
    share: float
    rule: int = PROBE_RULE

    def digest(self) -> int:
        return _hash(np.array([self.nprobe, self.coarse_rescore, self.share], dtype=np.float64))


class _Coarse:
    """A generation's trained coarse stage: the list centroids in faiss ``IndexRefineFlat(IndexLSH)`` (the
    centroids' sign bits in front of the float centroids), as stored (serialized, hashed) in the ``coarse`` table;
    the probe calibrated for it (``probe`` and ``probe_rule`` tables; ``None`` for a stage an earlier version
    trained) and whether its partition spills (``spill`` table: the ``threshold``, ``None`` = no spilling;
    ``spill_decided`` false for a stage an earlier version trained).

    A query finds its lists either exactly (cosine to every centroid, one matrix-vector product) or the way
    the index finds rows: Hamming distance between its sign bits and the centroids', then the best
    ``rescore × nprobe`` of those ordered by exact cosine (``IndexRefineFlat``'s ``k_factor``). A spilling
    partition lists a row also in its second-nearest list when that centroid's cosine is at least ``threshold``
    times the nearest's: a cluster that k-means split keeps its border rows on both sides.
    """

    def __init__(self, quantizer, trained_rows: int, nbytes: int = 0, probe: Probe | None = None,
                 spill: float | None = None, spill_decided: bool = False):
        import faiss

        self.quantizer, self.trained_rows, self.lists = quantizer, trained_rows, quantizer.ntotal
        self.exact = faiss.downcast_index(quantizer.refine_index)
        # a few queries' lists by cosine: the centroids in float16, half the bytes to read for the same lists (a
        # batch's: one BLAS product over the float32 centroids, faster than any per-query scan; docs/index.md)
        self.half = faiss.IndexScalarQuantizer(self.exact.d, faiss.ScalarQuantizer.QT_fp16)
        self.half.add(self.exact.reconstruct_n(0, self.lists))
        self.nbytes = (nbytes or len(faiss.serialize_index(quantizer))) + self.half.sa_code_size() * self.lists
        self.probe_setting, self.spill, self.spill_decided = probe, spill, spill_decided

    @classmethod
    def train(cls, sample: np.ndarray, lists: int) -> _Coarse:
        """Spherical k-means on the sample rows (int8 codes), then the quantizer over the centroids."""
        import faiss

        dims = sample.shape[1]
        kmeans = faiss.Kmeans(dims, lists, niter=10, spherical=True, seed=0)
        kmeans.train(unit_rows(sample))
        quantizer = faiss.IndexRefineFlat(faiss.IndexLSH(dims, dims, False, False))  # sign bits, then floats
        quantizer.add(kmeans.centroids)
        return cls(quantizer, len(sample))

    def probe(self, dense: np.ndarray, nprobe: int, rescore: int) -> np.ndarray:
        """The ``nprobe`` lists nearest to each row of ``dense`` by cosine ([rows, nprobe] int64): to every
        centroid (``rescore`` 0; in float16 for a few queries), or among the ``rescore × nprobe`` nearest by
        Hamming of the sign bits."""
        import faiss

        x, nprobe = unit_rows(dense), min(nprobe, self.lists)
        if not rescore:  # unit vectors: L2 order is cosine order
            return (self.half if len(x) < _PARALLEL_QUERIES else self.exact).search(x, nprobe)[1]
        return self.quantizer.search(x, nprobe, params=faiss.IndexRefineSearchParameters(k_factor=rescore))[1]

    def nearest(self, int8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's two nearest lists by cosine, exactly ([rows, 2] int32), and the second's cosine over the
        first's (float32)."""
        distances, lists = self.exact.search(unit_rows(int8), 2)
        cosines = 1 - distances / 2  # unit vectors
        return lists.astype(np.int32), cosines[:, 1] / np.maximum(cosines[:, 0], 1e-6)

    def assign(self, int8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's list and its spill list (-1: none), int32."""
        lists, ratios = self.nearest(int8)
        return lists[:, 0], spill_lists(lists[:, 1], ratios, self.spill)

    def calibrate(self, queries: np.ndarray, true_lists: dict[float, np.ndarray], rows: int) -> tuple[Probe, float]:
        """The probe for an index of ``rows`` rows, and the share of rows it spills (a key of ``true_lists``;
        0: the spill lists are not used). ``true_lists[spilled]``: the lists of the ``queries``' true top 10
        with that share of rows spilled ([queries, 10, 2]: each row's list and spill list, -1 = none).

        Of :data:`PROBE_NPROBES` × :data:`PROBE_RESCORES` × the spill shares, among those whose modelled time
        (:func:`probe_cost`) fits :data:`PROBE_BUDGET_US` (or the cheapest, where none does): the cheapest whose
        lists hold :data:`PROBE_SHARE` of the true top 10, else the one holding the most."""
        nprobes = sorted({min(n, self.lists) for n in PROBE_NPROBES})
        options = []  # (share, cost, nprobe, rescore, spilled)
        for rescore in PROBE_RESCORES:
            for nprobe in nprobes:
                found = self.probe(queries, nprobe, rescore)
                for spilled, truth in true_lists.items():
                    inside = [np.isin(t[:, 0], f) | np.isin(t[:, 1], f) for t, f in zip(truth, found)]  # -1: never
                    cost = probe_cost(self.lists, self.exact.d, rows, nprobe, rescore, spilled)
                    options.append((float(np.mean(inside)), cost, nprobe, rescore, spilled))
        affordable = [o for o in options if o[1] <= PROBE_BUDGET_US] or [min(options, key=lambda o: o[1])]
        enough = [o for o in affordable if o[0] >= PROBE_SHARE]
        share, _, nprobe, rescore, spilled = (min(enough, key=lambda o: (o[1], -o[0])) if enough
                                              else max(affordable, key=lambda o: (o[0], -o[1])))
        return Probe(nprobe, rescore, round(share, 4)), spilled


def spill_lists(second: np.ndarray, ratios: np.ndarray, threshold: float | None) -> np.ndarray:
    """The spill lists of rows whose second-nearest lists are ``second`` at cosine ``ratios`` of their nearest:
    the second list where the ratio reaches ``threshold``, else -1 (all -1 without a threshold)."""
    if threshold is None:
        return np.full(second.shape, -1, dtype=np.int32)
    return np.where(ratios >= threshold, second, -1).astype(np.int32)


def first_unique(found: np.ndarray) -> np.ndarray:
    """Each row of ``found`` (row numbers, -1 = none) with repeats dropped, order kept, padded with -1."""
    order = np.argsort(found, axis=1, kind="stable")  # a repeat sorts after its first occurrence
    ordered = np.take_along_axis(found, order, 1)
    repeat = np.zeros(found.shape, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0), 1)
    keep = np.argsort(repeat, axis=1, kind="stable")
    return np.where(np.take_along_axis(repeat, keep, 1), -1, np.take_along_axis(found, keep, 1))


def spill_digest(threshold: float | None) -> int:
    return _hash(np.array([np.nan if threshold is None else threshold], dtype=np.float64))


class _TrueNeighbours:
    """The exact top 10 by cosine of a few rows (the calibration's queries) among all rows, themselves excluded,
    found as the rows stream past in order (:meth:`see`)."""

    K = 10

    def __init__(self, positions: np.ndarray, codes: np.ndarray):
        self.positions, self.queries = positions, unit_rows(codes)
        self.scores = np.full((len(positions), self.K), -np.inf, dtype=np.float32)
        self.rows = np.full((len(positions), self.K), -1, dtype=np.int64)
        self.seen = 0

    def see(self, rows: np.ndarray) -> np.ndarray:
        """Take the next ``rows`` (int8 codes, in order) into account; → ``rows``."""
        if not len(rows):  # a span whose rows were all deleted
            return rows
        scores = self.queries @ unit_rows(rows).T
        mine = np.flatnonzero((self.positions >= self.seen) & (self.positions < self.seen + len(rows)))
        scores[mine, self.positions[mine] - self.seen] = -np.inf
        take = min(self.K, len(rows))
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        merged = np.concatenate([self.scores, np.take_along_axis(scores, top, 1)], 1)
        order = np.argsort(-merged, axis=1, kind="stable")[:, : self.K]
        self.scores = np.take_along_axis(merged, order, 1)
        self.rows = np.take_along_axis(np.concatenate([self.rows, top + self.seen], 1), order, 1)
        self.seen += len(rows)
        return rows


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
        # inverted lists a query visits and how it finds them (_Coarse.probe); None: as compaction calibrated them
        self.nprobe: int | None = None
        self.coarse_rescore: int | None = None
        self._lock = threading.RLock()
        self._readers = _lock_file(path / "READERS")  # shared while mapping a generation, exclusive to remove one
        self._faiss = self._coarse = None  # the in-memory first stage (built on first search); the trained coarse stage
        self._fds: dict[str, Any] = {}  # this generation's files, held open
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

        ``first_stage``: ``auto`` (the default) picks the structure by size (:func:`plan_lists`): an exact
        Hamming scan (faiss ``IndexBinaryFlat``) while small, an inverted file (faiss ``IndexBinaryIVF``,
        ``nprobe`` lists per query) once :meth:`compact` finds it large enough, re-trained by compaction as it
        grows; ``flat`` is always exact; ``ivf`` trains from 10,000 vectors.
        """
        first_stage = first_stage or "auto"
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
            if manifest.get("format") not in FORMATS:
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

    def _files(self) -> list[str]:
        """What each row has a file for in this generation: its vectors, its list when there is a coarse stage and
        its spill list when the partition spills."""
        coarse = self._coarse
        spills = coarse is not None and coarse.spill is not None
        return self._precisions() + (["lists"] if coarse else []) + (["spill"] if spills else [])

    def _width(self, precision: str) -> int:
        return {"binary": self.dimensions // 8, "lists": 1, "spill": 1}.get(precision, self.dimensions)

    def _row_bytes(self, precision: str) -> int:
        return self._width(precision) * np.dtype(PRECISIONS[precision]).itemsize

    def _map(self, precision: str) -> np.ndarray:
        shape = (self._count, self._width(precision))
        if self._count == 0:
            return np.zeros(shape, PRECISIONS[precision])
        return np.memmap(self._file(precision), dtype=PRECISIONS[precision], mode="r", shape=shape)

    def _open_files(self) -> None:
        """Hold this generation's files open (under the lock that keeps a compaction from removing them, like
        the maps): whole-file passes read through these, so a file removed meanwhile stays readable."""
        for precision in self._files():
            if precision not in self._fds and self._file(precision).exists():
                self._fds[precision] = open(self._file(precision), "rb")  # noqa: SIM115 (closed with the generation)

    def _close_files(self) -> None:
        for f in self._fds.values():
            f.close()
        self._fds = {}

    def _read(self, precision: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a vector file by plain reads: whole-file passes go through the page cache
        without mapping (and so without holding) the file in this process's memory."""
        rows = np.empty((stop - start, self._width(precision)), dtype=PRECISIONS[precision])
        if len(rows) and os.preadv(self._fds[precision].fileno(), [rows], start * self._row_bytes(precision)) \
                != rows.nbytes:
            raise self._damaged(f"{self._file(precision).name} ends before row {stop}")
        return rows

    def _spans(self, precision: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
        """``start:stop`` (default: every row) in whole blocks of about 32 MB."""
        step = max(BLOCK, _READ_BYTES // self._row_bytes(precision) // BLOCK * BLOCK)
        stop = self._count if stop is None else stop
        for first in range(start, stop, step):
            yield first, min(first + step, stop)

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

    def _generation_row(self, table: str, columns: str, generation: int) -> tuple | None:
        """``generation``'s row of ``columns`` in ``table`` (``None``: no row, or no such table: an earlier format)."""
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            return None
        return self._conn.execute(f"SELECT {columns} FROM {table} WHERE generation = ?", (generation,)).fetchone()

    def _has_blocks(self, generation: int, precision: str) -> bool:
        return self._conn.execute("SELECT 1 FROM blocks WHERE generation = ? AND precision = ? LIMIT 1",
                                  (generation, precision)).fetchone() is not None

    def _load_coarse(self, generation: int) -> _Coarse | None:
        """The coarse stage committed for ``generation`` (checked against its hash), or ``None``."""
        import faiss

        row = self._generation_row("coarse", "lists, trained_rows, quantizer, hash", generation)  # format 2: no table
        if row is None:
            if self._has_blocks(generation, "lists"):
                raise self._damaged("its rows have inverted lists but the trained coarse stage is missing")
            return None
        lists, trained, blob, digest = row
        data = np.frombuffer(blob, dtype=np.uint8)
        if _hash(data) != digest:
            raise self._damaged("the trained coarse stage does not match its checksum")
        try:
            quantizer = faiss.deserialize_index(data)
        except RuntimeError as exc:
            raise self._damaged(f"the trained coarse stage is unreadable ({str(exc).splitlines()[0][:200]})") from None
        if not isinstance(quantizer, faiss.IndexRefine) or quantizer.ntotal != lists or quantizer.d != self.dimensions:
            raise self._damaged(f"the coarse stage holds {quantizer.ntotal} centroids of {quantizer.d} dimensions "
                                f"({type(quantizer).__name__}), not {lists} of {self.dimensions}")
        return _Coarse(quantizer, trained, len(data), self._load_probe(generation), *self._load_spill(generation))

    def _load_probe(self, generation: int) -> Probe | None:
        """The probe calibrated for ``generation`` (checked against its hash), or ``None`` (an earlier version's)."""
        row = self._generation_row("probe", "nprobe, coarse_rescore, share, hash", generation)
        if row is None:
            return None
        rule = self._generation_row("probe_rule", "rule", generation)
        probe = Probe(*row[:3], rule=1 if rule is None else rule[0])
        if probe.digest() != row[3]:
            raise self._damaged("the calibrated probe does not match its checksum")
        return probe

    def _load_spill(self, generation: int) -> tuple[float | None, bool]:
        """(threshold, decided) of ``generation``'s spilling (checked against its hash): (``None``, false) for a
        stage an earlier version trained."""
        row = self._generation_row("spill", "threshold, hash", generation)
        if row is not None and spill_digest(row[0]) != row[1]:
            raise self._damaged("the spill threshold does not match its checksum")
        if (row is None or row[0] is None) and self._has_blocks(generation, "spill"):
            raise self._damaged("its rows have spill lists but the spill threshold is missing")
        return (None, False) if row is None else (row[0], True)

    def _load(self) -> None:
        """(Re)read the committed state (inside a snapshot, or under the writer lock): counts, maps,
        block hashes, live rows, the coarse stage; check what is cheap to check and the codes the first stage
        loads in full (binary, lists). The first stage itself is brought up to date by the next search."""
        count, generation, commit = self._manifest_state()
        same = generation == self._generation
        old_hashes, old_verified = (dict(self._hashes), dict(self._verified)) if same else ({}, {})
        if not same:
            self._faiss, self._indexed = None, 0
            self._coarse = self._load_coarse(generation)
            self._close_files()
        self._count, self._generation, self._commit = count, generation, commit
        self._open_files()
        n_blocks = -(-count // BLOCK)
        for precision in self._files():
            f = self._file(precision)
            size = f.stat().st_size if f.exists() else 0
            if size < count * self._row_bytes(precision):
                raise self._damaged(f"{f.name} holds {size} bytes, fewer than its {count} committed rows need")
        self._maps = {p: self._map(p) for p in self._files()}
        for precision in self._files():
            got = self._conn.execute("SELECT block, hash FROM blocks WHERE generation = ? AND precision = ? "
                                     "ORDER BY block", (generation, precision)).fetchall()
            hashes = np.array([h for _, h in got], dtype=np.int64)
            if len(got) != n_blocks or (n_blocks and got[-1][0] != n_blocks - 1):
                raise self._damaged(f"{len(got)} block hashes for the {n_blocks} blocks of {precision} vectors")
            verified = np.zeros(n_blocks, dtype=bool)
            if precision in old_hashes:  # blocks already verified whose hash did not change stay verified
                kept = min(len(old_hashes[precision]), n_blocks)
                verified[:kept] = old_verified[precision][:kept] & (old_hashes[precision][:kept] == hashes[:kept])
            self._hashes[precision], self._verified[precision] = hashes, verified
        if not same or not hasattr(self, "_inv_norm"):
            self._inv_norm = np.zeros(count, dtype=np.float32)
        else:
            self._inv_norm = np.concatenate([self._inv_norm[:count], np.zeros(count - len(self._inv_norm[:count]),
                                                                               np.float32)])
        for precision in ("binary", "lists", "spill"):
            if precision in self._files():
                self._verify_all(precision)  # the first stage loads every code and list
        low, high = self._conn.execute("SELECT min(row), max(row) FROM items").fetchone()
        if low is not None and (low < 0 or high >= count):
            raise self._damaged(f"an item row ({low if low < 0 else high}) lies outside the {count} committed rows")
        self._live = np.zeros(count, dtype=bool)
        self._live[np.fromiter((r for (r,) in self._conn.execute("SELECT row FROM items")), dtype=np.int64)] = True
        self._all_live = bool(self._live.all())
        if count < self._indexed:
            self._faiss, self._indexed = None, 0

    def _check_blocks(self, precision: str, first_block: int, rows: np.ndarray) -> None:
        """Hash the not yet verified blocks among ``rows`` (which start at block ``first_block``) against their
        recorded hashes (int8: and keep the rows' inverse norms for rescoring)."""
        verified = self._verified[precision]
        for i in range(0, len(rows), BLOCK):
            block = first_block + i // BLOCK
            if verified[block]:
                continue
            part = rows[i : i + BLOCK]
            if _hash(part) != self._hashes[precision][block]:
                raise self._damaged(f"rows {block * BLOCK}-{block * BLOCK + len(part) - 1} of "
                                    f"{self._file(precision).name} do not match their checksum")
            if precision == "int8":
                norms = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float32))
                self._inv_norm[block * BLOCK : block * BLOCK + len(part)] = 1.0 / np.maximum(norms, 1e-12)
            verified[block] = True

    def _verify_blocks(self, precision: str, blocks: np.ndarray) -> None:
        """Verify ``blocks`` of a vector file that are not verified yet (read through its map: a search's few)."""
        data = self._maps[precision]
        for block in (blocks[~self._verified[precision][blocks]] if len(blocks) else blocks).tolist():
            self._check_blocks(precision, block, data[block * BLOCK : (block + 1) * BLOCK])

    def _verified_spans(self, precision: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of ``start:stop`` read in spans of whole blocks, each block verified when not yet."""
        for first, last in self._spans(precision, start // BLOCK * BLOCK, stop):
            rows = self._read(precision, first, last)
            self._check_blocks(precision, first // BLOCK, rows)
            skip = max(0, start - first)
            yield first + skip, rows[skip:]

    def _verify_all(self, precision: str) -> None:
        """Verify every not yet verified block of a vector file, read in large spans (not mapped)."""
        todo = np.flatnonzero(~self._verified[precision])
        if len(todo):
            for _ in self._verified_spans(precision, int(todo[0]) * BLOCK, self._count):
                pass

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

    # ---- the first stage ----------------------------------------------------------------------
    def _new_first_stage(self) -> None:
        """An empty faiss first stage of this generation: exact ``IndexBinaryFlat``, or ``IndexBinaryIVF`` over
        the trained coarse stage's lists."""
        import faiss

        if self._coarse is None:
            self._faiss = faiss.IndexBinaryFlat(self.dimensions)
        else:
            self._faiss = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.dimensions), self.dimensions,
                                               self._coarse.lists)
            self._faiss.is_trained = True
        self._indexed = 0

    def _index_new_rows(self) -> None:
        """Bring the first stage up to the committed rows (rebuilt from nothing on the next call if this one
        fails half-way, e.g. on a damaged block: never rows twice)."""
        if self._faiss is None:
            self._new_first_stage()
        if self._indexed < self._count:
            try:
                self._add_rows(self._indexed, self._count)
            except BaseException:
                self._faiss, self._indexed = None, 0
                raise
            self._indexed = self._count

    def _add_rows(self, start: int, stop: int) -> None:
        """Add rows ``start:stop`` to the first stage: codes (and lists) read in spans, each block verified when
        not yet; an inverted file built from nothing gets lists of exactly their final size."""
        import faiss

        if self._coarse is None:
            for _, codes in self._verified_spans("binary", start, stop):
                self._faiss.add(codes)
            return
        lists, spills = (self._list_column(name, start, stop) for name in ("lists", "spill"))
        if spills is None:
            spills = np.zeros(0, dtype=np.int64)
        if len(spills) and not (-1 <= spills.min() and spills.max() < self._coarse.lists):
            raise self._damaged(f"{self._file('spill').name} names a list outside 0-{self._coarse.lists - 1}")
        if len(lists) and not (0 <= lists.min() and lists.max() < self._coarse.lists):
            raise self._damaged(f"{self._file('lists').name} names a list outside 0-{self._coarse.lists - 1}")
        invlists = faiss.downcast_InvertedLists(self._faiss.invlists)
        if start == 0:  # lists of exactly their final size: faiss's own growth would hold up to twice the codes
            sizes = np.bincount(np.concatenate([lists, spills[spills >= 0]]), minlength=self._coarse.lists)
            for number in np.flatnonzero(sizes).tolist():
                invlists.resize(number, int(sizes[number]))
            filled = np.zeros(self._coarse.lists, dtype=np.int64)
        entries = 0
        for first, codes in self._verified_spans("binary", start, stop):
            part = lists[first - start : first - start + len(codes)]
            ids = np.arange(first, first + len(codes), dtype=np.int64)
            if len(spills):  # a spilled row is in its second list too
                second = spills[first - start : first - start + len(codes)]
                twice = second >= 0
                codes, ids, part = (np.concatenate([a, b[twice]]) for a, b in ((codes, codes), (ids, ids),
                                                                              (part, second)))
            entries += len(ids)
            if start:
                self._faiss.add_core(len(ids), faiss.swig_ptr(codes), faiss.swig_ptr(ids), faiss.swig_ptr(part))
                continue
            order = np.argsort(part, kind="stable")
            codes, ids, part = np.ascontiguousarray(codes[order]), ids[order], part[order]
            bounds = np.flatnonzero(np.diff(part)) + 1
            for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(part)]):
                number = int(part[lo])
                invlists.update_entries(number, int(filled[number]), hi - lo, faiss.swig_ptr(ids[lo:hi]),
                                        faiss.swig_ptr(codes[lo:hi]))
                filled[number] += hi - lo
        if start == 0:
            self._faiss.ntotal = entries

    def _list_column(self, precision: str, start: int, stop: int) -> np.ndarray | None:
        """Rows ``start:stop`` of the ``lists`` or ``spill`` file (int64), verified; ``None`` without the file."""
        if precision not in self._files():
            return None
        return np.concatenate([part[:, 0] for _, part in self._verified_spans(precision, start, stop)]).astype(np.int64)

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
        """Write the batch's vectors (and, with a coarse stage, their lists) after the committed rows, durably
        (not yet visible); → the hashes of the blocks they fill, as ``blocks`` rows."""
        arrays = {"binary": batch.binary, "int8": batch.int8, "float": batch.floats}
        if self._coarse is not None:
            lists, spills = self._coarse.assign(batch.int8)
            arrays["lists"], arrays["spill"] = lists[:, None], spills[:, None]
        first = self._count // BLOCK
        hashes = []
        for precision in self._files():
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
                raise _disk_error(path, exc, "the batch was not added") from None
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
        """Take in our own committed append without rereading the index (new blocks verify on first use; the
        first stage takes the rows in at the next search)."""
        self._count, first = start + n, start // BLOCK
        self._open_files()
        self._maps = {p: self._map(p) for p in self._files()}
        for precision in self._files():
            new = np.array([h for _, p, _, h in hashes if p == precision], dtype=np.int64)
            self._hashes[precision] = np.concatenate([self._hashes[precision][:first], new])
            self._verified[precision] = np.concatenate([self._verified[precision][:first], np.zeros(len(new), bool)])
        self._inv_norm = np.concatenate([self._inv_norm[:start], np.zeros(n, np.float32)])
        self._live = np.concatenate([self._live, np.ones(n, dtype=bool)])
        self._live[replaced] = False
        self._all_live = self._all_live and not replaced
        self._acknowledge(self._commit + 1)

    def _remove_rows(self, rows: list[int]) -> int:
        if not rows:
            return 0
        with self._transaction() as conn:
            for part in _chunks(rows):
                conn.execute(f"DELETE FROM items WHERE row IN ({','.join('?' * len(part))})", part)
            conn.execute("UPDATE manifest SET value = ? WHERE key = 'commit'", (str(self._commit + 1),))
        self._live[rows] = False
        self._all_live = False
        self._acknowledge(self._commit + 1)
        return len(rows)

    def _delete(self, ids: list[str]) -> int:
        with self._writing():
            return self._remove_rows(self._rows_of("id", ids))

    def _delete_documents(self, doc_ids: list[str]) -> int:
        with self._writing():
            return self._remove_rows(self._rows_of("doc_id", doc_ids))

    def compact(self) -> int:
        """Rewrite the index without tombstones and with the first stage its size calls for; → rows dropped.

        A new generation: the vector files without deleted rows (hard links when none were deleted) and, when
        :func:`retrain_due` finds the coarse stage unfit for the size (:func:`plan_lists`), a new one: k-means
        on a sample of the int8 codes, every row assigned to its list. A generation with a coarse stage gets its
        probe calibrated (:meth:`_Coarse.calibrate`) on the exact neighbours of sample rows, found in the same
        pass over the int8 codes; an index whose stage has no calibration yet is compacted for it alone. Every
        block is verified first (a compaction never launders damage into new checksums). Readers keep their
        snapshot: the old files go only after the commit, once no reader is mapping them.
        """
        import faiss

        with self._writing():
            live = np.flatnonzero(self._live)
            dropped = self._count - len(live)
            wanted = plan_lists(len(live), self.first_stage)
            retrain, recalibrate = self._retrain_due(len(live)), self._calibration_due()
            if dropped == 0 and not retrain and not recalibrate:
                return 0
            old, new = self._generation, self._generation + 1
            for stale in [*self.path.glob("vectors.*"), self.path / "ivf.npz"]:  # a killed compaction's; format 2's
                if stale.exists() and not stale.name.startswith(f"vectors.{old}."):
                    stale.unlink()
            for precision in self._files():
                self._verify_all(precision)
            coarse = self._coarse
            if retrain:
                coarse = _Coarse.train(self._sample(live, train_rows(len(live), wanted, self.dimensions))[1],
                                       wanted) if wanted else None
            hashes, linked = [], []
            try:
                for precision in self._precisions():
                    if dropped == 0:
                        os.link(self._file(precision, old), self._file(precision, new))  # the same rows
                        linked.append(precision)
                    else:
                        hashes += self._write_file(precision, new, self._live_rows(precision, live))
                if coarse is not None:
                    probe, spill = self._partition(coarse, live, retrain or recalibrate, new, hashes)
                with self._transaction() as conn:
                    if dropped:
                        conn.execute(ITEMS.format(name="items_new"))
                        conn.execute("INSERT INTO items_new SELECT ROW_NUMBER() OVER (ORDER BY row) - 1, id, text, "
                                     "metadata, doc_id, position, crc FROM items ORDER BY row")
                        conn.execute("DROP TABLE items")
                        conn.execute("ALTER TABLE items_new RENAME TO items")
                        conn.execute("CREATE INDEX items_doc ON items(doc_id)")
                    conn.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", hashes)
                    for precision in linked:
                        conn.execute("INSERT INTO blocks SELECT ?, precision, block, hash FROM blocks "
                                     "WHERE generation = ? AND precision = ?", (new, old, precision))
                    conn.execute("DELETE FROM blocks WHERE generation = ?", (old,))
                    conn.execute(COARSE)
                    conn.execute("DELETE FROM coarse WHERE generation = ?", (old,))
                    conn.execute(PROBE)
                    conn.execute("DELETE FROM probe WHERE generation = ?", (old,))
                    conn.execute(PROBE_RULE_TABLE)
                    conn.execute("DELETE FROM probe_rule WHERE generation = ?", (old,))
                    conn.execute(SPILL)
                    conn.execute("DELETE FROM spill WHERE generation = ?", (old,))
                    if coarse is not None:
                        blob = faiss.serialize_index(coarse.quantizer)
                        conn.execute("INSERT INTO coarse VALUES (?, ?, ?, ?, ?)",
                                     (new, coarse.lists, coarse.trained_rows, blob.tobytes(), _hash(blob)))
                        conn.execute("INSERT INTO probe VALUES (?, ?, ?, ?, ?)",
                                     (new, probe.nprobe, probe.coarse_rescore, probe.share, probe.digest()))
                        conn.execute("INSERT INTO probe_rule VALUES (?, ?)", (new, probe.rule))
                        conn.execute("INSERT INTO spill VALUES (?, ?, ?)", (new, spill, spill_digest(spill)))
                    manifest = {**dict(conn.execute("SELECT key, value FROM manifest")), "format": FORMAT}
                    for key, value in (("count", len(live)), ("generation", new), ("commit", self._commit + 1),
                                       ("format", FORMAT), ("checksum", _facts_checksum(manifest))):
                        conn.execute("UPDATE manifest SET value = ? WHERE key = ?", (str(value), key))
            except BaseException:
                for stale in self.path.glob(f"vectors.{new}.*"):
                    stale.unlink()
                raise
            self._load()
            self._acknowledge(self._commit)
            fcntl.flock(self._readers, fcntl.LOCK_EX)  # no reader is between its snapshot and its maps
            try:
                for stale in self.path.glob(f"vectors.{old}.*"):
                    stale.unlink()
            finally:
                fcntl.flock(self._readers, fcntl.LOCK_UN)
            return dropped

    def _partition(self, coarse: _Coarse, live: np.ndarray, assign: bool, new: int,
                   hashes: list[tuple]) -> tuple[Probe, float | None]:
        """Write generation ``new``'s lists (and spill lists) of the ``live`` rows, adding their blocks' hashes
        to ``hashes``, and calibrate the probe; → (probe, spill threshold).

        The true top 10 of :data:`PROBE_QUERIES` sample rows are found in one pass over the int8 codes. With
        ``assign`` (a new stage, or one calibrated by an earlier rule), that pass also finds each row's two
        nearest lists, and the calibration decides whether the partition spills, and which of
        :data:`SPILL_SHARES` of the rows (the most ambiguous: by the second list's cosine over the first's);
        otherwise the stored lists are copied and the stage keeps its decision."""
        truth = _TrueNeighbours(*self._sample(live, min(PROBE_QUERIES, len(live)), seed=1))
        int8 = (truth.see(rows) for rows in self._live_rows("int8", live))
        if assign:
            pairs, ratios = np.empty((len(live), 2), np.int32), np.empty(len(live), np.float32)
            done = 0
            for rows in int8:
                pairs[done : done + len(rows)], ratios[done : done + len(rows)] = coarse.nearest(rows)
                done += len(rows)
            thresholds = {0.0: None, **{share: float(np.quantile(ratios, 1 - share)) for share in SPILL_SHARES}}
            lists = pairs[:, 0]
            true_lists = {share: np.stack([lists[truth.rows], spill_lists(pairs[truth.rows, 1], ratios[truth.rows],
                                                                          threshold)], -1)
                          for share, threshold in thresholds.items()}
            probe, spilled = coarse.calibrate(truth.queries, true_lists, len(live))
            threshold = thresholds[spilled]
            spills = spill_lists(pairs[:, 1], ratios, threshold)
        else:
            for _ in int8:
                pass
            lists, spills = (self._list_column(name, 0, self._count) for name in ("lists", "spill"))
            lists, threshold = lists[live], coarse.spill
            spills = np.full(len(live), -1, np.int32) if spills is None else spills[live]
            probe, spilled = coarse.calibrate(truth.queries, {float(np.mean(spills >= 0)): np.stack(
                [lists[truth.rows], spills[truth.rows]], -1)}, len(live))
        hashes += self._write_file("lists", new, [lists[:, None]])
        if spilled:
            hashes += self._write_file("spill", new, [spills[:, None]])
        return probe, threshold if spilled else None

    def _sample(self, live: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``count`` live rows (a fixed random choice): (their positions among the live rows, their int8 codes),
        read row by row (a gather through the map would pull most of the file into this process by readahead)."""
        pick = np.sort(np.random.default_rng(seed).choice(len(live), count, replace=False))
        out = np.empty((count, self.dimensions), dtype=np.int8)
        fd, size = self._fds["int8"].fileno(), self._row_bytes("int8")
        for i, row in enumerate(live[pick].tolist()):
            os.preadv(fd, [out[i]], row * size)
        return pick, out

    def _live_rows(self, precision: str, live: np.ndarray) -> Iterator[np.ndarray]:
        """The ``live`` rows of a vector file of this generation, in order, span by span."""
        for first, rows in self._verified_spans(precision, 0, self._count):
            lo, hi = np.searchsorted(live, [first, first + len(rows)])
            yield rows[live[lo:hi] - first]

    def _write_file(self, precision: str, generation: int, parts: Iterator[np.ndarray]) -> list[tuple]:
        """Write a new vector file of ``generation`` from ``parts`` (rows in order), durably; → its blocks' hashes."""
        path, hashes, carry = self._file(precision, generation), [], np.zeros((0, self._width(precision)))
        try:
            with open(path, "wb") as f:
                for part in parts:
                    part = np.ascontiguousarray(part, dtype=PRECISIONS[precision])
                    f.write(part.tobytes())
                    rows = np.concatenate([carry.astype(part.dtype), part]) if len(carry) else part
                    whole = len(rows) // BLOCK * BLOCK
                    hashes += [(generation, precision, len(hashes) + i // BLOCK, _hash(rows[i : i + BLOCK]))
                               for i in range(0, whole, BLOCK)]
                    carry = rows[whole:]
                if len(carry):
                    hashes.append((generation, precision, len(hashes), _hash(carry)))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _disk_error(path, exc, "nothing was changed") from None
        return hashes

    # ---- searching ----------------------------------------------------------------------------
    def _allowed(self, where: dict[str, Any]) -> np.ndarray | None:
        """Mask of rows a search may return (live, matching ``where``); ``None`` = every row."""
        if not where:
            return None if self._all_live else self._live
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

        self._index_new_rows()
        allowed = self._allowed(where)
        n = min(n, self._count)
        binary = np.ascontiguousarray(binary)
        if self._coarse is None:
            params = None
            if allowed is not None:
                bitmap = np.packbits(allowed, bitorder="little")
                params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(self._count, faiss.swig_ptr(bitmap)))
            return self._faiss.search(binary, n, params=params)[1]
        # IVF: faiss has no selector for binary IVF, so over-fetch and drop disallowed rows; a query
        # left short (a selective filter) gets an exact Hamming search over the allowed rows instead
        # a spilled row can be found in two of the lists probed: fetch twice as many and keep each row's first
        probe = self._coarse.probe(dense, *self._probe_setting())
        self._faiss.nprobe = probe.shape[1]
        fetch = n if allowed is None else min(self._count, 2 * n)
        spills = self._coarse.spill is not None
        found = self._faiss.search_preassigned(binary, fetch * (2 if spills else 1), probe, None)[1]
        if spills:
            found = first_unique(found)[:, :fetch]
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

    def _probe_setting(self) -> tuple[int, int]:
        """(nprobe, coarse_rescore) of a search: as set on this handle, else as calibrated (else the defaults)."""
        calibrated = self._coarse.probe_setting
        nprobe = self.nprobe or (calibrated.nprobe if calibrated else NPROBE)
        rescore = calibrated.coarse_rescore if calibrated else COARSE_RESCORE
        return nprobe, rescore if self.coarse_rescore is None else self.coarse_rescore

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
                found[row] = (id_, text, json.loads(meta) if meta != "{}" else {}, doc, pos)
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
            self._load_coarse(self._generation)
            for precision in self._files():
                self._verified[precision][:] = False
                self._verify_all(precision)
            items = 0
            for first, codes in self._verified_spans("int8", 0, self._count):
                for row, id_, text, meta, doc, pos, crc in self._conn.execute(
                        "SELECT row, id, text, metadata, doc_id, position, crc FROM items WHERE row >= ? AND row < ? "
                        "ORDER BY row", (first, first + len(codes))):
                    if _item_checksum(id_, text, meta, doc, pos, codes[row - first]) != crc:
                        raise self._damaged(f"item row {row} ({str(id_)[:80]!r}) does not match its checksum")
                    items += 1
            integrity = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if integrity != "ok":
                raise self._damaged(f"{DB}: {integrity}")
            self._check_head()
            return {"path": str(self.path), "ok": True, "items": items, "vector_rows": self._count,
                    "generation": self._generation, "commit": self._commit,
                    "blocks_verified": {p: len(self._hashes[p]) for p in self._files()}}

    def __len__(self) -> int:
        with self._reading():
            return int(self._live.sum())

    def stats(self) -> dict[str, Any]:
        with self._reading():
            files = [self.path / DB] + [self._file(p) for p in self._files()]
            disk = sum(f.stat().st_size for f in files if f.exists())
            docs = self._conn.execute("SELECT COUNT(DISTINCT doc_id) FROM items").fetchone()[0]
            items = int(self._live.sum())
            coarse = self._coarse
            nprobe, coarse_rescore = self._probe_setting() if coarse else (None, None)
            retrain, spilled = self._retrain_due(), self._spilled()
            return {**self.info(), "backend": "embedded", "path": str(self.path), "items": items,
                    "documents": docs, "vector_rows": self._count, "tombstones": self._count - items,
                    "generation": self._generation, "commit": self._commit,
                    "bytes_per_vector": {p: self._row_bytes(p) for p in self._precisions()},
                    "search_structure_bytes_per_vector": self._structure_bytes(spilled),
                    "first_stage": self.first_stage,
                    "first_stage_index": "IndexBinaryFlat" if coarse is None else "IndexBinaryIVF",
                    "lists": coarse.lists if coarse else None, "trained_rows": coarse.trained_rows if coarse else None,
                    "nprobe": nprobe, "coarse_rescore": coarse_rescore,
                    "probe_share": coarse.probe_setting.share if coarse and coarse.probe_setting else None,
                    "spilled": spilled if coarse else None,
                    "retrain_due": retrain, "needs_compaction": retrain or self._calibration_due(), "disk_bytes": disk}

    @property
    def needs_compaction(self) -> bool:
        """Whether :meth:`compact` would train the first stage again (the index has outgrown, or shrunk below,
        the structure it was trained for) or calibrate its probe (a stage an earlier version trained). The CLI's
        ``index add`` compacts then."""
        with self._reading():
            return self._compaction_due()

    def _compaction_due(self) -> bool:
        return self._retrain_due() or self._calibration_due()

    def _calibration_due(self) -> bool:
        """A trained stage without a calibrated probe or spill decision (an earlier version trained it), or one
        calibrated by an earlier :data:`PROBE_RULE`."""
        coarse, probe = self._coarse, self._coarse and self._coarse.probe_setting
        return coarse is not None and (probe is None or probe.rule < PROBE_RULE or not coarse.spill_decided)

    def _spilled(self) -> float:
        """The share of rows also in their second list."""
        return float(np.mean(self._maps["spill"] >= 0)) if "spill" in self._maps and self._count else 0.0

    def _retrain_due(self, rows: int | None = None) -> bool:
        rows = int(self._live.sum()) if rows is None else rows
        coarse = self._coarse
        return retrain_due(coarse.lists if coarse else 0, plan_lists(rows, self.first_stage),
                           coarse.trained_rows if coarse else None, self.dimensions)

    def _structure_bytes(self, spilled: float) -> float:
        """In-memory bytes per vector of the search: codes and the 4-byte inverse norm kept for rescoring; an
        inverted file adds faiss's 8-byte row id (code and id again for the ``spilled`` share of rows) and the
        row's share of the coarse quantizer (the centroids and their sign bits)."""
        code = self._row_bytes("binary") + 4
        if self._coarse is None:
            return code
        entry = (self._row_bytes("binary") + 8) * (1 + spilled)
        return round(4 + entry + self._coarse.nbytes / max(self._count, 1), 1)

    def close(self) -> None:
        with self._lock:
            self._maps, self._faiss = {}, None
            self._close_files()
            self._conn.close()
            self._readers.close()
