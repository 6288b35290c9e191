"""``pplx-embed bench``: the engine benchmark (``bench/bench_engine.py`` of a source checkout)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "bench_engine.py"


def _bench_module() -> ModuleType | None:
    if not BENCH_SCRIPT.is_file():
        return None
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_bench(args: argparse.Namespace) -> int:
    from pplx_embed.cli import CLIError

    module = _bench_module()
    if module is None:
        raise CLIError(f"benchmark script not found at {BENCH_SCRIPT}; run pplx-embed bench from a source checkout")
    return module.run(args, " ".join(["pplx-embed", *sys.argv[1:]]))


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmark the engine's backends against sentence-transformers (CPU), "
                                         "write docs/benchmarks/engine-cpu.md")
    module = _bench_module()
    if module is not None:
        module.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
