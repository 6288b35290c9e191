"""Index benchmark: build time, bytes/vector, QPS and recall@10 vs faiss IndexFlatIP (float, exact).

Synthetic clustered vectors (dim 1024 by default, the pplx-embed-v1-0.6b width) are indexed by the
embedded index (binary first stage, exact ``flat`` or ``ivf``, then int8 rescoring) and, with
``--milvus``, by the Milvus backend on Milvus Lite. Every system answers the same query batch in the
same run; recall@10 is against exact float cosine search.

    python bench/bench_index.py --n 100000 --out docs/benchmarks/index-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import cpu_name


def clustered(n: int, dim: int, centers: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Points around random cluster centers, scaled like pooled pplx vectors (tanh does not saturate)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        out[start : start + m] = centers[rng.integers(0, len(centers), m)] + noise * rng.standard_normal((m, dim))
    return out * np.float32(0.1)


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
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64], help="IVF lists visited (each measured)")
    parser.add_argument("--milvus", action="store_true", help="also benchmark the Milvus backend (Milvus Lite)")
    parser.add_argument("--dir", default=None, help="where to build the indexes (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write a markdown report here")
    args = parser.parse_args()

    import faiss

    from pplx_embed.index import Index

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.clusters or max(1, args.n // 100), args.dim)).astype(np.float32)
    x = clustered(args.n, args.dim, centers, rng, args.noise)
    q = clustered(args.queries, args.dim, centers, rng, args.noise)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rows = []

    def build_flat():
        index = faiss.IndexFlatIP(args.dim)
        index.add(xn)
        return index

    build, flat = timed(build_flat)
    seconds, (_, truth) = timed(lambda: flat.search(qn, 10))
    float_qps = args.queries / seconds
    rows.append(("faiss IndexFlatIP (float32, exact)", build, 4 * args.dim, float_qps, 1.0))
    print(f"float exact: {float_qps:,.0f} QPS", flush=True)
    flat.reset()  # free its memory for the systems under test

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-index-"))
    ids = [f"v{i}" for i in range(args.n)]
    for first_stage in ("flat", "ivf"):
        path = root / f"embedded-{first_stage}"
        shutil.rmtree(path, ignore_errors=True)

        def build_embedded():
            ix = Index.create(str(path), "synthetic", args.dim, first_stage=first_stage)
            for start in range(0, args.n, 10_000):
                ix.add(ids=ids[start : start + 10_000], vectors=x[start : start + 10_000])
            ix.close()
            return Index.open(str(path))  # the first stage is built (IVF: trained) on open

        build, ix = timed(build_embedded)
        for nprobe in args.nprobe if first_stage == "ivf" else [None]:
            ix.nprobe = nprobe
            for cand in args.candidates:
                seconds, (found, _) = timed(lambda: ix.search_rows(q, 10, candidates=cand), repeat=2)
                name = f"embedded {first_stage} binary + int8 rescore ({cand} cand." + \
                    (f", nprobe {nprobe})" if nprobe else ")")
                rows.append((name, build, ix.stats()["search_structure_bytes_per_vector"], args.queries / seconds,
                             recall_at(found, truth)))
                print(rows[-1], flush=True)
        seconds, hits = timed(lambda: ix.search_many(q, 10, candidates=cand), repeat=2)
        rows.append((name.replace("rescore", "rescore + SQLite hits"), build, rows[-1][2], args.queries / seconds,
                     recall_at([np.array([int(h.id[1:]) for h in hs]) for hs in hits], truth)))
        print(rows[-1], flush=True)
        ix.close()

    if args.milvus:
        path = root / "milvus.db"
        path.unlink(missing_ok=True)

        def build_milvus():
            ix = Index.create(f"milvus:{path}#bench", "synthetic", args.dim)
            for start in range(0, args.n, 10_000):
                ix.add(ids=ids[start : start + 10_000], vectors=x[start : start + 10_000])
            return ix

        build, ix = timed(build_milvus)
        seconds, (found, _) = timed(lambda: ix.search_rows(q, 10, candidates=args.candidates[-1]))
        found = [np.array([int(i[1:]) for i in f]) for f in found]
        rows.append((f"Milvus Lite BIN_FLAT Hamming + int8 rescore ({args.candidates[-1]} cand.)", build,
                     args.dim // 8, args.queries / seconds, recall_at(found, truth)))
        print(rows[-1], flush=True)
        ix.close()
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)

    import pplx_embed

    header = [
        "# Index benchmark (CPU)", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {cpu_name()}, {os.cpu_count()} cores visible (shared machine), no GPU",
        f"- versions: pplx-embed {pplx_embed.__version__}, faiss {faiss.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"- data: {args.n:,} synthetic clustered vectors, dim {args.dim}, {len(centers):,} clusters, "
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
