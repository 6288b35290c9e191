"""Loopback load test of ``pplx-embed serve`` against the Python API and Infinity, measured in the same run.

Three questions, each bounded in requests and seconds, all on 127.0.0.1:

1. **Saturation throughput**: N concurrent clients sending ``--texts-per-request`` texts per request
   (MedQuAD dev queries and passages) vs ``Embedder.encode`` on the same texts in its two best
   configurations: one call over all texts (the engine packs them by token budget), and N threads
   each calling ``encode`` per request. The server should reach 0.9 of the better one.
2. **Short queries under 2x overload**: single-query requests arriving open-loop at twice the rate
   the server sustained for them closed-loop; p50/p99 of the answered ones and how many got 429.
3. **Head-of-line blocking**: a max-size request (``--big-texts`` passages of the model's full
   window, just under the 120,000-token limit) while one client sends short queries back to back:
   their p50/p99, and how many were answered before the big request finished.

Infinity (``infinity-emb``, a peer server) pins libraries that clash with the project venv; with
``--infinity-venv DIR`` the bench creates that venv if it is missing (``pip install
"infinity-emb[server]==0.0.78"``, then ``torch==2.13.0``, ``sentence-transformers<5``,
``transformers<4.58``), serves the same model directory with it and runs the same load. Writes Markdown to
``docs/benchmarks/serve-cpu.md``::

    .venv/bin/python bench/bench_serve.py --model minilm --infinity-venv /tmp/infinity-venv
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from common import read_texts  # bench/ is on sys.path when a bench runs as a script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medquad" / "dev"
# Infinity's server, then its torch engine's libraries at versions it accepts; torch 2.13.0 is ours (CPU wheel here)
INFINITY = (["infinity-emb[server]==0.0.78"],
            ["torch==2.13.0", "sentence-transformers>=3.0.1,<5", "transformers>=4.57,<4.58"])


def load_texts(kind: str, count: int, emb) -> list[str]:
    """``count`` MedQuAD dev queries or answers (answers cut to what the model holds)."""
    texts = read_texts(DATA / ("queries.jsonl" if kind == "queries" else "corpus.jsonl"), count)
    if kind != "queries":  # whole passages, cut to the model's window so every server accepts them
        ids = emb.tokenize(texts, truncation="right")
        texts = [emb.tokenizer.decode(i, skip_special_tokens=True) for i in ids]
        texts = [t for t, n in zip(texts, emb.count_tokens(texts)) if n <= emb.max_length]
    return texts


PEERS = ("**Infinity** (`infinity-emb` 0.0.78, torch engine, CPU, no BetterTransformer) serves the same MiniLM "
         "checkpoint directory from its own venv (it pins transformers 4.57, numpy < 2 and uvicorn 0.32, which clash "
         "with ours; the bench creates the venv with the pins above and torch 2.13 CPU), called at `POST /embeddings` "
         "with `encoding_format: base64` (float32; ours answers base64 int8). It runs with its defaults (it "
         "batches across requests by itself, batch size 32); other settings were not tried. "
         "**TEI** (Text Embeddings Inference) is a Rust "
         "binary / Docker image: neither Docker nor its release downloads are reachable from this machine, so it "
         "was not measured.")


def percentiles(latencies: list[float]) -> dict:
    lat = np.array(latencies or [float("nan")]) * 1000
    return {"p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


# ---- systems -----------------------------------------------------------------------------------------
class Server:
    """A server subprocess on a free loopback port and how to ask it for embeddings."""

    def __init__(self, name: str, cmd: list[str], path: str, body, env: dict | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.name, self.path, self.body = name, path, body
        cmd = [part.replace("{port}", str(self.port)) for part in cmd]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                               **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited; its log: {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{name} did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()
        print(f"{self.name} log: {self.log.name}", flush=True)


def pplx_server(model: str) -> Server:
    cmd = [sys.executable, "-m", "pplx_embed.cli", "serve", "--model", model, "--port", "{port}",
           "--log-level", "warning"]
    return Server("pplx-embed serve", cmd, "/v1/embeddings",
                  lambda texts: {"input": texts, "model": model, "encoding_format": "base64_int8"})


def infinity_server(venv: Path, model_dir: str, name: str) -> Server:
    """Infinity in its own venv (created here when missing), serving the same checkpoint directory."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in INFINITY:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    cmd = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", model_dir, "--served-model-name", name,
           "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", "{port}",
           "--no-bettertransformer"]
    return Server("infinity", cmd, "/embeddings", lambda texts: {"input": texts, "model": name,
                                                                 "encoding_format": "base64"},
                  env={"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"})


async def closed_loop(server: Server, requests: list[list[str]], clients: int, seconds: float) -> dict:
    """``clients`` connections each sending its next request as soon as the last is answered."""
    latencies, stop, queue = [], time.perf_counter() + seconds, iter(requests)
    texts = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        async def worker():
            nonlocal texts
            while time.perf_counter() < stop and (batch := next(queue, None)) is not None:
                start = time.perf_counter()
                response = await client.post(server.path, json=server.body(batch))
                response.raise_for_status()
                assert len(response.json()["data"]) == len(batch)
                latencies.append(time.perf_counter() - start)
                texts += len(batch)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"requests": len(latencies), "texts_s": round(texts / wall, 1), **percentiles(latencies)}


async def open_loop(server: Server, queries: list[str], rate: float, seconds: float) -> dict:
    """Single-query requests arriving every ``1/rate`` s whatever the answers: latency of the answered, 429s."""
    latencies, statuses = [], []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        async def one(query: str):
            start = time.perf_counter()
            try:
                response = await client.post(server.path, json=server.body([query]))
                statuses.append(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)

        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(queries[i % len(queries)])))
        await asyncio.gather(*tasks)
    others = [str(x) for x in statuses if x not in (200, 429)]
    other = ", ".join(f"{x} x{others.count(x)}" for x in sorted(set(others))) or "0"
    return {"offered_req_s": round(rate, 1), "sent": len(statuses), "ok": statuses.count(200),
            "429": statuses.count(429), "other": other, **percentiles(latencies)}


def head_of_line(server: Server, big: list[str], queries: list[str], limit: int) -> dict:
    """One max-size request; meanwhile short queries one after another until it is answered."""
    with httpx.Client(base_url=server.url, timeout=600) as client:
        result: dict = {}

        def send_big():
            start = time.perf_counter()
            response = client.post(server.path, json=server.body(big))
            result.update(status=response.status_code, big_s=round(time.perf_counter() - start, 1))

        thread = threading.Thread(target=send_big)
        thread.start()
        time.sleep(0.5)  # the big request is in
        latencies, during = [], 0
        with httpx.Client(base_url=server.url, timeout=600) as small:
            for query in queries[:limit]:
                if not thread.is_alive():
                    break
                start = time.perf_counter()
                small.post(server.path, json=server.body([query])).raise_for_status()
                latencies.append(time.perf_counter() - start)
                during += thread.is_alive()
        thread.join()
    return {**result, "small_answered_during": during, **percentiles(latencies)}


def one_call(emb, requests: list[list[str]]) -> dict:
    """``Embedder.encode`` of all the texts in one call (the engine packs them by token budget)."""
    texts = [t for r in requests for t in r]
    start = time.perf_counter()
    emb.encode(texts, quantization="int8")
    return {"requests": len(requests), "texts_s": round(len(texts) / (time.perf_counter() - start), 1)}


def threads(emb, requests: list[list[str]], clients: int) -> dict:
    """``clients`` threads calling ``Embedder.encode`` per request."""
    latencies = []

    def call(batch):
        start = time.perf_counter()
        emb.encode(batch, quantization="int8")
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(call, requests))
    texts = sum(len(r) for r in requests)
    return {"requests": len(requests), "texts_s": round(texts / (time.perf_counter() - start), 1),
            **percentiles(latencies)}


def median_of(runs: list[dict]) -> dict:
    """The run of median throughput, with the range of all runs."""
    runs = sorted(runs, key=lambda r: r["texts_s"])
    return {**runs[len(runs) // 2], "range": f"{runs[0]['texts_s']}-{runs[-1]['texts_s']}"}


# ---- report --------------------------------------------------------------------------------------------
def versions() -> dict:
    import fastapi
    import torch
    import transformers
    import uvicorn

    import pplx_embed

    return {"pplx_embed": pplx_embed.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "python": platform.python_version()}


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--texts-per-request", type=int, default=16)
    ap.add_argument("--requests", type=int, default=48, help="requests per saturation run (queries)")
    ap.add_argument("--passage-requests", type=int, default=4, help="requests per saturation run (passages)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per saturation cell (median shown, order rotated)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time cap of each run")
    ap.add_argument("--overload-seconds", type=float, default=10.0)
    ap.add_argument("--big-texts", type=int, default=468, help="texts of the max-size request (468: the issue's)")
    ap.add_argument("--infinity-venv", default=None, help="venv for Infinity (created when missing); unset: skip")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "serve-cpu.md"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pplx_embed import Embedder
    from pplx_embed.engine.threads import cpu_description

    emb = Embedder(args.model)
    emb.encode(["warm up"])
    per = args.texts_per_request
    queries = load_texts("queries", args.requests * per, emb)
    passages = load_texts("passages", max(args.passage_requests * per, args.big_texts), emb)
    workloads = {"queries": [queries[i : i + per] for i in range(0, len(queries) - per + 1, per)],
                 "passages": [passages[i : i + per] for i in range(0, args.passage_requests * per, per)]}
    big = (passages * (args.big_texts // len(passages) + 1))[: args.big_texts]
    loads = [load()]
    servers = [pplx_server(args.model)]
    if args.infinity_venv:
        servers.append(infinity_server(Path(args.infinity_venv), str(emb.checkpoint.path), args.model))
    saturation, overload, blocking = [], [], []
    try:
        for kind, requests in workloads.items():
            systems = [("python-api, one call", lambda r=requests: one_call(emb, r)),
                       (f"python-api, {args.clients} threads", lambda r=requests: threads(emb, r, args.clients))]
            systems += [(f"{server.name}, {args.clients} clients", lambda r=requests, s=server:
                         asyncio.run(closed_loop(s, r, args.clients, args.seconds))) for server in servers]
            runs: dict[str, list[dict]] = {name: [] for name, _ in systems}
            for rep in range(args.repeats):  # rotate the order so that no system always runs first
                for name, run in systems[rep % len(systems):] + systems[: rep % len(systems)]:
                    runs[name].append(run())
            best = max(median_of(runs[name])["texts_s"] for name, _ in systems[:2])  # the Python API's best
            for name, _ in systems:
                m = median_of(runs[name])
                saturation.append([f"{kind} x{per}", name, m["requests"], f"{m['texts_s']} ({m['range']})",
                                   f"{m['texts_s'] / best:.2f}", m.get("p50_ms", ""), m.get("p99_ms", "")])
                print(saturation[-1], flush=True)
        loads.append(load())
        singles = [[q] for q in queries]
        for server in servers:
            capacity = asyncio.run(closed_loop(server, singles, args.clients, args.overload_seconds))
            rate = 2 * capacity["texts_s"]
            r = asyncio.run(open_loop(server, queries, rate, args.overload_seconds))
            overload.append([server.name, capacity["texts_s"], r["offered_req_s"], r["sent"], r["ok"], r["429"],
                             r["other"], r["p50_ms"], r["p99_ms"]])
            print(overload[-1], flush=True)
        loads.append(load())
        tokens = sum(emb.count_tokens(big))
        for server in servers:
            r = head_of_line(server, big, queries, limit=2000)
            blocking.append([server.name, f"{len(big)} texts, {tokens} tokens", r["status"], r["big_s"],
                             r["small_answered_during"], r["p50_ms"], r["p99_ms"]])
            print(blocking[-1], flush=True)
        loads.append(load())
    finally:
        for server in servers:
            server.stop()

    lines = ["# Server benchmark (CPU): `pplx-embed serve` vs the Python API and Infinity, same run", "",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ", f"Device: {cpu_description()}  ",
             (f"Load average (1 min) at start / after each part: {' / '.join(loads)} (2 cores shared with other "
             "jobs)  "), f"Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}  ",
             f"Model: `{args.model}` ({emb.dimension} dims, {emb.max_length} tokens), int8 output  ",
             f"Command: `.venv/bin/python bench/bench_serve.py {' '.join(sys.argv[1:])}`", "",
             "## 1. Throughput at saturation", "",
             (f"{args.clients} concurrent clients, {per} texts per request (MedQuAD dev queries; passages cut to "
             f"the model window). Each cell ran {args.repeats} times, systems in rotating order: the median "
             "run (range of all runs). `vs best` = texts/s over the better of the two Python API configurations "
             "(on a shared machine, 16 threads can out-run one call by taking a larger share of the cores). "
             "Latency is per request."), ""]
    lines += table(["workload", "system", "requests", "texts/s (range)", "vs best", "p50 ms", "p99 ms"], saturation)
    lines += ["", "## 2. Short queries under 2x overload", "",
              ("Capacity = single-query req/s with the clients above, closed loop; then single-query requests "
              f"arrive open-loop at twice that for {args.overload_seconds:g} s. Latency of the answered ones."), ""]
    lines += table(["system", "capacity req/s", "offered req/s", "sent", "200", "429", "other", "p50 ms", "p99 ms"],
                   overload)
    lines += ["", "## 3. Short queries while a max-size request runs", "",
              ("One request of passages at the model window (just under the 120,000-token request limit); "
              "meanwhile one client sends single queries back to back until it is answered."), ""]
    lines += table(["system", "big request", "status", "big s", "queries answered during it", "p50 ms",
                    "p99 ms"], blocking)
    lines += ["", "## Peers", "", PEERS if args.infinity_venv else "Infinity was not measured in this run (no "
              "`--infinity-venv`)."]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
