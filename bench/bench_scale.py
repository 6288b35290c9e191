"""Serving past one process, measured on one machine: one ``pplx-embed serve`` process vs ``--replicas 1`` vs
``--replicas 2`` (Ray Serve), the autoscaler's answer to a load spike, and a sizing for 1 billion documents a day.

1. **Saturation**: ``--clients`` closed-loop clients sending ``--texts-per-request`` texts per request for
   ``--seconds`` (after ``--warmup``), for short queries and for whole documents: requests/s, texts/s, tokens/s,
   p50/p99 latency, for each configuration in turn on the same machine. One process vs ``--replicas 1`` is the
   cost of Ray's proxy and the extra hop (same engine, same threads); ``--replicas 2`` splits the cores.
2. **Concurrency sweep** on ``--replicas 1``: throughput per number of requests in flight; the smallest that
   reaches 90% of the best is the autoscaling target (``--target-ongoing-requests``) this machine supports.
3. **Load spike**: ``--autoscale 1:2`` idle, then ``--spike-clients`` clients at once: seconds until a second
   replica serves (the upscale delay, Ray's look-back over its metrics, then starting the replica: loading
   and warming the model), and throughput in 10-second windows before and after.
4. **Sizing**: replicas (and cores) for 10⁹ documents a day = tokens a day ÷ (measured tokens/s per replica).

The load generator runs in this process on the same machine (it takes CPU from the servers: said in the
report). Texts: MedQuAD dev queries and passages from ``../shared/data`` (passages cut to the model's window).
Writes ``docs/benchmarks/scale-cpu.md`` (``--out``) and a JSON beside it::

    .venv/bin/python bench/bench_scale.py --model minilm                       # the full run (about 15 min)
    .venv/bin/python bench/bench_scale.py --model minilm --seconds 5 --warmup 1 --sweep 1,4 --spike-seconds 90 \\
        --out /tmp/scale.md                                                   # a small check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from bench_serve import Server, load, load_texts, percentiles, table, versions  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DOCS_PER_DAY = 1_000_000_000
# On paper (section 5): dense bf16 tensor FLOP/s of data-centre GPUs (vendor sheets, no sparsity) and the share an
# encoder's batched forward pass is assumed to reach. Not measured: `--device cuda` measures instead.
GPU_PEAK_BF16 = {"H100 SXM": 989e12, "A100": 312e12, "L4": 121e12}
ASSUMED_MFU = 0.4


def serve(model: str, *flags: str, device: str | None = None) -> Server:
    """``pplx-embed serve`` (``flags``: e.g. ``--replicas 2``) on a free port; returns once it answers."""
    cmd = [sys.executable, "-m", "pplx_embed.cli", "serve", "--model", model, "--port", "{port}", "--log-level",
           "warning", *flags, *(["--device", device] if device else [])]
    name = " ".join(["serve", *flags]) if flags else "serve (one process)"
    return Server(name, cmd, "/v1/embeddings", lambda texts: {"input": texts, "model": model})


async def saturate(url: str, requests: list[list[str]], model: str, clients: int, seconds: float,
                   warmup: float) -> dict:
    """``clients`` closed-loop clients cycling through ``requests``; what was answered after ``warmup``."""
    done, statuses, start = [], [], time.perf_counter()
    measure, stop = start + warmup, start + warmup + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker(k: int):
            i = k
            while time.perf_counter() < stop:
                batch = requests[i % len(requests)]
                i += clients
                sent = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"input": batch, "model": model})
                except httpx.HTTPError as exc:
                    statuses.append(type(exc).__name__)
                    continue
                statuses.append(r.status_code)
                if r.status_code == 200 and sent >= measure:
                    done.append((time.perf_counter() - sent, len(batch), r.json()["usage"]["total_tokens"]))

        await asyncio.gather(*(worker(k) for k in range(clients)))
    wall = max(time.perf_counter() - measure, 1e-9)
    failed = [str(s) for s in statuses if s != 200]
    errors = ", ".join(f"{s} x{failed.count(s)}" for s in sorted(set(failed))) or "0"
    return {"clients": clients, "requests": len(done), "req_s": round(len(done) / wall, 2),
            "texts_s": round(sum(d[1] for d in done) / wall, 1), "tokens_s": round(sum(d[2] for d in done) / wall),
            "errors": errors, **percentiles([d[0] for d in done])}


async def spike(url: str, requests: list[list[str]], model: str, clients: int, seconds: float) -> dict:
    """Idle → ``clients`` at once; when the second replica serves, and texts/s per 10-second window."""
    answered, replicas, start = [], [], time.perf_counter()
    stop = start + seconds
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker(k: int):
            i = k
            while time.perf_counter() < stop:
                r = await client.post("/v1/embeddings", json={"input": requests[i % len(requests)], "model": model})
                i += clients
                if r.status_code == 200:
                    answered.append((time.perf_counter() - start, len(r.json()["data"])))

        async def watch():
            while time.perf_counter() < stop:
                try:
                    health = (await client.get("/health", timeout=10)).json()
                    replicas.append((time.perf_counter() - start, health.get("replicas", 0)))
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.5)

        await asyncio.gather(watch(), *(worker(k) for k in range(clients)))
    second = next((t for t, n in replicas if n >= 2), None)
    windows = [sum(n for t, n in answered if w <= t < w + 10) / 10 for w in range(0, int(seconds) - 9, 10)]
    return {"second_replica_s": None if second is None else round(second, 1), "windows_texts_s": windows}


def sweep(url: str, requests: list[list[str]], model: str, levels: list[int], seconds: float,
          warmup: float) -> list[dict]:
    return [asyncio.run(saturate(url, requests, model, c, seconds, warmup)) for c in levels]


def sizing(tokens_s: float, tokens_per_doc: float, cores: float) -> tuple[int | str, float | str]:
    """(replicas, cores) to embed ``DOCS_PER_DAY`` documents of ``tokens_per_doc`` tokens a day."""
    if not tokens_s:
        return "n/a", "n/a"
    replicas = math.ceil(DOCS_PER_DAY * tokens_per_doc / 86_400 / tokens_s)
    return replicas, replicas * cores


def flops_per_token(preset: str, tokens: int) -> float:
    """Forward FLOPs per token of a pplx-embed model (``model.synthetic.PRESETS``) at ``tokens`` per sequence:
    2 x the weights of its matrix products, plus the attention scores and their weighted sum."""
    from pplx_embed.model.synthetic import PRESETS

    c = PRESETS[preset]
    d, layers, attn = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"] * c["head_dim"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    weights = layers * (d * attn * 2 + d * kv * 2 + 3 * d * c["intermediate_size"])
    return 2 * weights + 4 * layers * tokens * attn


def on_paper(tokens_per_doc: float) -> list[str]:
    """Section 5: GPUs for 10⁹ documents a day of the published models, from FLOPs and an assumed utilisation."""
    rows = []
    for preset, name in (("0.6b", "pplx-embed-v1-0.6b"), ("4b", "pplx-embed-v1-4b")):
        for doc_tokens in (round(tokens_per_doc), 512):
            flops = flops_per_token(preset, doc_tokens)
            for gpu, peak in GPU_PEAK_BF16.items():
                tokens_s = ASSUMED_MFU * peak / flops
                rows.append([name, doc_tokens, f"{flops / 1e9:.2f}", gpu, f"{tokens_s:,.0f}",
                             sizing(tokens_s, doc_tokens, 1)[0]])
    return ["", "## 5. Sizing on paper for GPUs (not measured)", "",
            (f"No GPU was measured here. FLOPs per token of the published shapes (2 x matrix-product weights + "
             f"attention at the document's length), at {ASSUMED_MFU:.0%} of each GPU's dense bf16 peak (an "
             "assumption: this engine reached 72-91% of the CPU's bf16 matmul peak at 512 tokens, "
             "[engine-cpu-0.6b.md](engine-cpu-0.6b.md)). GPUs = 10⁹ x tokens per document / 86,400 s / tokens/s "
             "per GPU, no headroom. `bench/bench_scale.py --device cuda --model pplx-embed-v1-0.6b` on a GPU "
             "machine replaces this with measured figures (section 4)."), "",
            *table(["model", "tokens / doc", "GFLOP / token", "GPU", "tokens/s / GPU (on paper)", "GPUs"], rows)]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--device", default=None, help="passed to serve (e.g. cuda); default: the engine's choice")
    ap.add_argument("--clients", type=int, default=32, help="closed-loop clients at saturation")
    ap.add_argument("--texts-per-request", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    ap.add_argument("--sweep", default="1,2,4,8,16,32", help="concurrency levels on --replicas 1 ('' skips)")
    ap.add_argument("--spike-clients", type=int, default=32)
    ap.add_argument("--spike-seconds", type=float, default=180.0)
    ap.add_argument("--upscale-delay", type=float, default=5.0, help="serve --upscale-delay during the spike")
    ap.add_argument("--target-ongoing-requests", type=float, default=None, help="for the spike (default: serve's)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "scale-cpu.md"))
    ap.add_argument("--note", default="", help="a line under the title (e.g. why these figures are not final)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pplx_embed import Embedder
    from pplx_embed.engine.threads import cpu_description, physical_cores

    emb = Embedder(args.model)
    per = args.texts_per_request
    queries = load_texts("queries", 64 * per, emb)
    passages = load_texts("passages", 16 * per, emb)
    workloads = {"queries": [queries[i : i + per] for i in range(0, len(queries) - per + 1, per)],
                 "documents": [passages[i : i + per] for i in range(0, len(passages) - per + 1, per)]}
    tokens_per_doc = float(np.mean(emb.count_tokens(passages)))
    cores = physical_cores()
    configs = [("one process", (), 1), ("--replicas 1", ("--replicas", "1"), 1),
               ("--replicas 2", ("--replicas", "2"), 2)]  # (name, serve flags, replicas)
    loads, rows, results, sweep_rows = [load()], [], {}, []
    for name, flags, replicas in configs:
        replica_cores = cores / replicas
        server = serve(args.model, *flags, device=args.device)
        try:
            for kind, requests in workloads.items():
                r = asyncio.run(saturate(server.url, requests, args.model, args.clients, args.seconds, args.warmup))
                results[(name, kind)] = {**r, "replicas": replicas, "replica_cores": replica_cores}
                rows.append([kind, name, r["requests"], r["req_s"], r["texts_s"], r["tokens_s"], r["p50_ms"],
                             r["p99_ms"], r["errors"]])
                print(rows[-1], flush=True)
            if name == "--replicas 1" and args.sweep:
                levels = [int(x) for x in args.sweep.split(",")]
                for r in sweep(server.url, workloads["queries"], args.model, levels, args.seconds, args.warmup):
                    sweep_rows.append([r["clients"], r["req_s"], r["texts_s"], r["p50_ms"], r["p99_ms"]])
                    print(sweep_rows[-1], flush=True)
        finally:
            server.stop()
        loads.append(load())

    flags = ["--autoscale", "1:2", "--upscale-delay", str(args.upscale_delay)]
    if args.target_ongoing_requests:
        flags += ["--target-ongoing-requests", str(args.target_ongoing_requests)]
    server = serve(args.model, *flags, device=args.device)
    try:
        time.sleep(5)  # idle
        spiked = asyncio.run(spike(server.url, workloads["queries"], args.model, args.spike_clients,
                                   args.spike_seconds))
    finally:
        server.stop()
    loads.append(load())
    print(spiked, flush=True)

    # ---- report ------------------------------------------------------------------------------------
    device = args.device or "cpu"
    target = None
    if sweep_rows:
        best = max(r[2] for r in sweep_rows)
        target = next(r[0] for r in sweep_rows if r[2] >= 0.9 * best)
    one, rep1 = results[("one process", "queries")], results[("--replicas 1", "queries")]
    doc_one, doc_rep1 = results[("one process", "documents")], results[("--replicas 1", "documents")]
    lines = ["# Serving past one process (CPU): one process vs Ray Serve replicas, same machine, same run", "",
             *([f"**{args.note}**", ""] if args.note else []),
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ", f"Device: {cpu_description()}  ",
             f"Load average (1 min) at start / after each configuration / after the spike: {' / '.join(loads)}  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}, ray {_ray_version()}  ",
             f"Model: `{args.model}` ({emb.dimension} dims), int8 output, engine device {device}  ",
             f"Command: `.venv/bin/python bench/bench_scale.py {' '.join(sys.argv[1:])}`", "",
             "## 1. Throughput and latency at saturation", "",
             (f"{args.clients} closed-loop clients, {per} texts per request, {args.seconds:g} s measured after "
              f"{args.warmup:g} s of load; queries: MedQuAD dev questions; documents: MedQuAD passages cut to the "
              f"model's window ({tokens_per_doc:.0f} tokens on average). The load generator runs on the same "
              f"{cores} cores. `--replicas 1` runs the same engine with the same threads behind Ray's HTTP proxy; "
              "`--replicas 2` gives each replica half the cores."), ""]
    lines += table(["texts", "configuration", "requests", "req/s", "texts/s", "tokens/s", "p50 ms", "p99 ms",
                    "errors"], rows)
    lines += ["", (f"Ray's proxy and hop, one process → `--replicas 1`: queries "
                   f"{ratio(rep1['texts_s'], one['texts_s'])} throughput, p50 "
                   f"{rep1['p50_ms'] - one['p50_ms']:+.1f} ms; documents "
                   f"{ratio(doc_rep1['texts_s'], doc_one['texts_s'])} throughput, p50 "
                   f"{doc_rep1['p50_ms'] - doc_one['p50_ms']:+.1f} ms (Ray's proxy, controller and the replica "
                   "share the cores with the engine).")]
    if sweep_rows:
        lines += ["", "## 2. Requests in flight per replica (autoscaling target)", "",
                  (f"`--replicas 1`, queries, {args.seconds:g} s per level. The smallest level within 90% of the best "
                   f"throughput: **{target}** (serve's `--target-ongoing-requests` default is 8)."), ""]
        lines += table(["in flight", "req/s", "texts/s", "p50 ms", "p99 ms"], sweep_rows)
    lines += ["", "## 3. Load spike: time to a second replica", "",
              (f"`serve --autoscale 1:2 --upscale-delay {args.upscale_delay:g}` idle, then {args.spike_clients} "
               f"clients at once (queries) for {args.spike_seconds:g} s. A second replica served after "
               f"**{spiked['second_replica_s']} s** (None: not within the run). That is Ray Serve's upscale delay, "
               "its look-back over replica metrics (30 s, averaged), then a replica process starting, loading and "
               "warming the model; it takes no request before it is warmed."), "",
              "texts/s per 10-second window from the spike: "
              + ", ".join(f"{w:.0f}" for w in spiked["windows_texts_s"])]
    lines += ["", "## 4. Sizing for 1 billion documents a day", ""]
    sizing_rows = []
    for name, _, replicas in configs:
        r = results[(name, "documents")]
        per_replica, replica_cores = round(r["tokens_s"] / replicas), cores / replicas
        for doc_tokens in (tokens_per_doc, 512):
            n, total = sizing(per_replica, doc_tokens, replica_cores)
            sizing_rows.append([device, name, f"{replica_cores:g}", per_replica, f"{doc_tokens:.0f}", n,
                                total if isinstance(total, str) else f"{total:g}"])
    lines += [(f"10⁹ documents a day are {DOCS_PER_DAY / 86_400:,.0f} documents/s. Replicas = documents/s × "
               "tokens per document ÷ measured tokens/s of one replica (documents workload above), at saturation, "
               "with no headroom: add about 30% for peaks and for replicas starting."), ""]
    lines += table(["device", "measured as", "cores / replica", "tokens/s / replica", "tokens / doc", "replicas",
                    "cores"], sizing_rows)
    if device == "cpu":
        lines += on_paper(tokens_per_doc)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({
        "saturation": {f"{k[0]} / {k[1]}": v for k, v in results.items()}, "sweep": sweep_rows, "target": target,
        "spike": spiked, "tokens_per_doc": tokens_per_doc, "loads": loads}, indent=1))
    print(f"wrote {path}")
    return 0


def _ray_version() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    sys.exit(main())
