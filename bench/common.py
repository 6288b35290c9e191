"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path


def add_run_args(parser: argparse.ArgumentParser, work: str, out: Path) -> None:
    """Options every training benchmark shares: seed, CPU threads, work folder (resumable), result file."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--work", default=work)
    parser.add_argument("--out", default=str(out))


def start_run(args: argparse.Namespace) -> Path:
    """Logging, torch threads and the work folder (emptied with ``--fresh``, else kept to resume) → the folder."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    return work


def eval_engine() -> dict:
    """Embedder options of the benchmarks' evaluations: torch bf16 where the CPU computes bf16 natively
    (cosine ≥ 0.9999 to fp32, docs/engine.md), else torch fp32 — fixed, so every model is scored alike."""
    from pplx_embed.engine.backends import native_bf16
    from pplx_embed.engine.threads import cpu_flags

    return {"backend": "torch", "dtype": "bfloat16" if native_bf16(cpu_flags()) else "float32"}


def read_texts(path: Path, count: int) -> list[str]:
    """The first ``count`` non-blank ``text`` fields of a JSON-lines file (BEIR corpus or queries)."""
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"].strip()
            if text:
                texts.append(text)
            if len(texts) >= count:
                break
    return texts
