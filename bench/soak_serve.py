"""Soak ``pplx-embed serve`` with the adversarial suite's hostile generator, for minutes instead of seconds.

The same seeded cases as ``tests/adversarial`` (every route: malformed and deeply nested JSON, wrong
types, huge numbers, invalid Unicode, oversized and lying bodies, broken framing, auth variants, wrong
methods and paths), from ``--clients`` clients at once, new seeds until ``--minutes`` are over; every
few seconds a silent connection and a slowloris one check that the timeouts still hold, and the server's
memory is sampled. Fails (exit 1) on any problem the suite would report: a 5xx, a client mistake not
answered 4xx, an error that is not our JSON or quotes too much, a log line too long or showing the key,
a timeout not kept, memory that keeps growing. Writes ``docs/benchmarks/soak-serve.json``::

    .venv/bin/python bench/soak_serve.py --minutes 30 --clients 16
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from adversarial import hostile  # noqa: E402  (the suite's generator, from tests/)

SLACK = 1.5  # seconds a busy machine may add to a timer


def timeouts_hold(address: tuple[str, int]) -> list[str]:
    """A silent connection is closed at the idle timeout, a slowloris one answered 408 at the header timeout."""
    found = []
    with socket.create_connection(address, timeout=30) as sock:
        data, seconds = hostile.until_closed(sock)
    if data or seconds > hostile.IDLE_TIMEOUT + SLACK:
        found.append(f"a silent connection was closed after {seconds:.1f} s with {data[:80]!r}")
    with socket.create_connection(address, timeout=30) as sock:
        start = time.monotonic()
        try:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
            for _ in range(30):
                sock.sendall(b"X")
                time.sleep(0.1)
        except OSError:
            pass
        data, _ = hostile.until_closed(sock)
        seconds = time.monotonic() - start
    if not data.startswith(b"HTTP/1.1 408") or seconds > hostile.HEADER_TIMEOUT + SLACK:
        found.append(f"a slowloris connection got {data[:40]!r} after {seconds:.1f} s")
    return found


def environment() -> dict:
    from pplx_embed.engine.cache import versions
    from pplx_embed.engine.threads import cpu_model

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
            "python": platform.python_version(), **versions("torch", "transformers", "uvicorn", "fastapi", "h11")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=200, help="cases per seed")
    parser.add_argument("--seed", type=int, default=1000, help="first seed")
    parser.add_argument("--rss-growth-mib", type=float, default=300.0,
                        help="most the server may grow after the first batch (MiB)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "soak-serve.json"))
    args = parser.parse_args()

    from pplx_embed.cli import main as cli

    environment_at_start = environment()
    work = Path(tempfile.mkdtemp(prefix="pplx-soak-"))
    for name, extra in (("kb", []), ("ctx", ["--contextual"])):
        assert cli(["index", "create", str(work / name), "--model", "minilm", *extra]) == 0
    serve_args = ["--model", "minilm", "--index", f"kb={work / 'kb'}", "--index", f"ctx={work / 'ctx'}",
                  *hostile.SERVE_FLAGS, "--max-connections", str(4 * args.clients + 16)]
    kinds = tuple(hostile.KINDS)
    statuses: collections.Counter = collections.Counter()
    problems: list[str] = []
    rss: list[tuple[float, int]] = []
    cases_run, seed = 0, args.seed
    with hostile.ServerProcess(serve_args, work / "serve.log") as server:
        start = time.monotonic()
        deadline = start + 60 * args.minutes
        stop = threading.Event()

        def probe() -> None:  # timeouts and memory, every few seconds, beside the load
            while not stop.wait(5):
                rss.append((round(time.monotonic() - start, 1), server.rss()))
                problems.extend(timeouts_hold(server.address))

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        with ThreadPoolExecutor(args.clients) as pool:
            while time.monotonic() < deadline and len(problems) < 100:
                cases = hostile.cases(seed, args.batch, kinds)
                for case, answer in zip(cases, pool.map(
                        lambda c: hostile.exchange(server.address, c.raw, c.method), cases)):
                    statuses[answer.status if answer else "closed"] += 1
                    problems.extend(hostile.problems(case, answer))
                if seed == args.seed:
                    warm = server.rss()
                cases_run, seed = cases_run + len(cases), seed + 1
        stop.set()
        prober.join()
        end_rss = server.rss()
        problems.extend(hostile.log_problems(server.text()))
        healthy = server.healthy()
    grown = (end_rss - warm) / 2**20
    if grown > args.rss_growth_mib:
        problems.append(f"the server grew by {grown:.0f} MiB after the first batch")
    if not healthy:
        problems.append("the server was not healthy at the end")
    result = {"environment": environment_at_start, "minutes": round((time.monotonic() - start) / 60, 2),
              "clients": args.clients, "cases": cases_run, "seeds": [args.seed, seed - 1],
              "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
              "rss_mib": {"after_first_batch": round(warm / 2**20), "end": round(end_rss / 2**20),
                          "max": round(max([r for _, r in rss] + [end_rss]) / 2**20), "growth": round(grown, 1)},
              "rss_samples_mib": [(t, round(r / 2**20)) for t, r in rss],
              "problems": len(problems), "first_problems": problems[:20]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples_mib"}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
