"""Loopback load test of ``pplx-embed serve`` vs calling the Python API directly, in the same run.

For each workload (texts per request) and concurrency level it sends a bounded number of requests
(``--requests``, stopping early after ``--seconds``) and reports throughput (requests/s, texts/s)
and p50/p99 latency for:

* ``python-api``: ``Embedder.encode(texts, "int8")`` called by N threads in this process (no HTTP);
* ``pplx-embed serve``: the server in a subprocess, ``POST /v1/embeddings`` (base64_int8) over
  loopback from N concurrent ``httpx`` clients — HTTP, JSON, base64 and queueing included, with
  cross-request dynamic batching;
* optionally a peer server given by ``--infinity-url`` (OpenAI ``/embeddings``) or ``--tei-url``
  (``/embed``) serving the same model.

Texts are MedQuAD dev queries and answers from ``../shared/data``. Writes a Markdown report::

    .venv/bin/python bench/bench_serve.py --model minilm --concurrency 1,4,16 --requests 64 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from pplx_embed.engine.threads import cpu_description

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medquad" / "dev"


def load_texts(kind: str, count: int, emb) -> list[str]:
    """``count`` MedQuAD dev queries or answers (answers cut to what the model holds)."""
    name = "queries.jsonl" if kind == "queries" else "corpus.jsonl"
    texts = []
    with (DATA / name).open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"].strip()
            if text:
                texts.append(text)
            if len(texts) >= count:
                break
    if kind != "queries":  # whole passages, cut to the model's window so every server accepts them
        ids = emb.tokenize(texts, truncation="right")
        texts = [emb.tokenizer.decode(i, skip_special_tokens=True) for i in ids]
        texts = [t for t, n in zip(texts, emb.count_tokens(texts)) if n <= emb.max_length]
    return texts


def summarize(latencies: list[float], wall: float, texts_per_request: int) -> dict:
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "seconds": round(wall, 2), "req_s": round(len(lat) / wall, 1),
            "texts_s": round(len(lat) * texts_per_request / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def run_direct(emb, requests: list[list[str]], concurrency: int, seconds: float) -> dict:
    """N threads calling the Python API, bounded by count and time."""
    latencies, lock, stop = [], threading.Lock(), time.perf_counter() + seconds
    queue = iter(requests)

    def worker():
        while time.perf_counter() < stop:
            with lock:
                texts = next(queue, None)
            if texts is None:
                return
            start = time.perf_counter()
            emb.encode(texts, quantization="int8")
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return summarize(latencies, time.perf_counter() - start, len(requests[0]))


async def run_http(url: str, make_body, check, requests: list[list[str]], concurrency: int,
                   seconds: float, headers: dict | None = None) -> dict:
    """N concurrent HTTP clients, bounded by count and time; every answer is checked."""
    latencies, stop, queue = [], time.perf_counter() + seconds, iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits, headers=headers) as client:
        async def worker():
            while time.perf_counter() < stop and (texts := next(queue, None)) is not None:
                start = time.perf_counter()
                response = await client.post(url, json=make_body(texts))
                response.raise_for_status()
                check(response.json(), texts)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summarize(latencies, time.perf_counter() - start, len(requests[0]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch_tokens: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pplx_embed.cli", "serve", "--model", f"bench={model}", "--port", str(port),
           "--log-level", "warning", "--max-batch-tokens", str(max_batch_tokens), "--max-queue", "1024"]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not become ready")


def versions() -> dict:
    import fastapi
    import torch
    import transformers
    import uvicorn

    import pplx_embed

    return {"pplx_embed": pplx_embed.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "python": platform.python_version()}


def command_line() -> str:
    """This run's arguments, without the (long) peers note."""
    argv, out = sys.argv[1:], []
    for i, arg in enumerate(argv):
        if arg == "--peers-note" or (i and argv[i - 1] == "--peers-note"):
            continue
        out.append(shlex.quote(arg))
    return " ".join(out)


def write_report(path: Path, args, rows: list[dict], info: dict, peers_note: str) -> None:
    lines = ["# Server benchmark (CPU): `pplx-embed serve` vs the Python API, same run",
             "", f"Date: {info['date']}  ", f"Device: {info['device']}  ",
             f"Load average before/after: {info['load_before']} / {info['load_after']} (shared machine)  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}  ",
             f"Model: `{args.model}` ({info['dimension']} dims), int8 output (`base64_int8` over HTTP)  ",
             f"Command: `.venv/bin/python bench/bench_serve.py {command_line()}`", "",
             f"Each cell ran {args.repeats} times (systems in rotating order); the run with the median "
             "throughput is shown, with the range of req/s over all runs. A run sends at most "
             f"{args.requests} requests, stopping early after {args.seconds:g} s; every HTTP answer is checked "
             "for shape. `python-api` = N threads calling `Embedder.encode` in-process (no HTTP). "
             "Latency is per request.", "",
             "| workload | concurrency | system | requests | req/s (range) | texts/s | p50 ms | p99 ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['concurrency']} | {r['system']} | {r['requests']} | {r['req_s']} "
                     f"({r['range']}) | {r['texts_s']} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += ["", "## Peers", "", peers_note, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--workloads", default="queries:1,passages:8",
                    help="KIND:TEXTS_PER_REQUEST,... with KIND queries or passages")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=96, help="requests per cell at most")
    ap.add_argument("--seconds", type=float, default=20.0, help="time cap per cell")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell (median reported; order rotated)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--infinity-url", default=None, help="base URL of a running Infinity server (same model)")
    ap.add_argument("--tei-url", default=None, help="base URL of a running TEI server (same model)")
    ap.add_argument("--peer-model", default=None, help="model name the peer server expects")
    ap.add_argument("--peers-note", default="Infinity and TEI were not measured in this run.")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "serve-cpu.md"))
    args = ap.parse_args()

    from pplx_embed import Embedder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    emb = Embedder(args.model, max_batch_tokens=args.max_batch_tokens)
    emb.encode(["warm up"])
    levels = [int(c) for c in args.concurrency.split(",")]
    load_before = os.getloadavg()[0]
    port = free_port()
    server = start_server(args.model, port, args.max_batch_tokens)
    url = f"http://127.0.0.1:{port}"
    width = emb.dimension

    def check_pplx(payload, texts):
        assert len(payload["data"]) == len(texts) and len(payload["data"][0]["embedding"]) == 4 * ((width + 2) // 3)

    def check_openai(payload, texts):
        assert len(payload["data"]) == len(texts)

    def check_tei(payload, texts):
        assert len(payload) == len(texts) and len(payload[0]) == width

    systems = [("pplx-embed serve", f"{url}/v1/embeddings",
                lambda t: {"input": t, "model": "bench", "encoding_format": "base64_int8"}, check_pplx)]
    if args.infinity_url:
        systems.append(("infinity", f"{args.infinity_url}/embeddings",
                        lambda t: {"input": t, "model": args.peer_model or args.model}, check_openai))
    if args.tei_url:
        systems.append(("TEI", f"{args.tei_url}/embed", lambda t: {"inputs": t, "normalize": False}, check_tei))
    rows = []
    try:
        for workload in args.workloads.split(","):
            kind, per = workload.split(":")
            per = int(per)
            texts = load_texts(kind, args.requests * per, emb)
            requests = [texts[i : i + per] for i in range(0, len(texts) - per + 1, per)][: args.requests]
            for c in levels:
                runners = [("python-api", lambda c=c: run_direct(emb, requests, c, args.seconds))]
                runners += [(name, lambda c=c, e=endpoint, b=body, k=check:
                             asyncio.run(run_http(e, b, k, requests, c, args.seconds)))
                            for name, endpoint, body, check in systems]
                results: dict[str, list[dict]] = {name: [] for name, _ in runners}
                for rep in range(args.repeats):  # rotate the order so no system always runs first
                    for name, runner in runners[rep % len(runners):] + runners[: rep % len(runners)]:
                        results[name].append(runner())
                for name, runs in results.items():
                    runs.sort(key=lambda r: r["req_s"])
                    median = runs[len(runs) // 2]
                    row = {"workload": f"{kind} x{per}", "concurrency": c, "system": name, **median,
                           "range": f"{runs[0]['req_s']}-{runs[-1]['req_s']}"}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(60)
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": f"{cpu_description()}, {os.cpu_count()} cores visible (CPU only)",
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "versions": versions(), "dimension": width}
    write_report(Path(args.out), args, rows, info, args.peers_note)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
