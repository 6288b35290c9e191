"""``backend="auto"``: the fastest configuration that passes an accuracy guard, measured once per machine.

On first use of a model on a machine, each candidate configuration the CPU supports (torch fp32,
torch bf16 and OpenVINO bf16 only with native bf16, OpenVINO fp32) embeds a fixed probe set of real
texts shipped with the package (``probe_texts.json``: MedQuAD questions and answers, CC BY 4.0).
The fastest one whose vectors stay within the guard of torch fp32's (mean cosine ≥ 0.9995, min ≥
0.999) wins. The decision is cached as JSON under ``$PPLX_EMBED_CACHE/auto`` keyed by the checkpoint
files, the CPU model, flags and cores, and the library versions, so a changed checkpoint, machine or
upgrade decides again. int8 compute is never a candidate (lossy: explicit opt-in only).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import time
from collections.abc import Callable
from importlib import util
from pathlib import Path

import numpy as np
import torch

from pplx_embed.atomic import write_text
from pplx_embed.engine.backends import create_backend, native_bf16
from pplx_embed.engine.cache import cache_root, checkpoint_files, digest, entry_name, versions
from pplx_embed.engine.engine import Backend
from pplx_embed.engine.threads import NOTABLE_FLAGS, cpu_flags, cpu_model, physical_cores

log = logging.getLogger(__name__)

GUARD = {"mean_cosine": 0.9995, "min_cosine": 0.999}
REFERENCE = ("torch", "float32")
DECISION_FORMAT = 1  # bump when candidates, probe or timing change
PROBE_FILE = Path(__file__).with_name("probe_texts.json")
SMALL_MODEL = 100_000_000  # parameters: smaller models probe on the whole set, larger ones on a prefix
PROBE_TOKENS = {"small": 2048, "large": 768}


def probe_texts() -> list[str]:
    """The shipped probe / calibration texts (short questions and long answers, interleaved)."""
    return json.loads(PROBE_FILE.read_text(encoding="utf-8"))["texts"]


def probe_prefix(ids: list[list[int]], parameters: int) -> list[list[int]]:
    """The leading probe sequences within the token budget for a model of this size (at least three)."""
    budget = PROBE_TOKENS["small" if parameters < SMALL_MODEL else "large"]
    total, keep = 0, []
    for seq in ids:
        if len(keep) >= 3 and total + len(seq) > budget:
            break
        keep.append(seq)
        total += len(seq)
    return keep


def candidates(flags: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """``(backend, dtype)`` pairs worth measuring on this CPU, the torch fp32 reference first."""
    flags = cpu_flags() if flags is None else flags
    bf16 = native_bf16(flags)
    found = [REFERENCE] + [("torch", "bfloat16")] * bf16
    if util.find_spec("openvino") is not None:
        found += [("openvino", "float32")] + [("openvino", "bfloat16")] * bf16
    return found


def decision_key(checkpoint_path: Path, guard: dict[str, float] | None = None) -> str:
    """Hash of what decides: checkpoint files, CPU model / flags / cores, versions, guard, probe set."""
    flags = cpu_flags()
    return digest({
        "path": str(Path(checkpoint_path).resolve()), "files": checkpoint_files(checkpoint_path),
        "cpu": cpu_model(), "flags": [f for f in NOTABLE_FLAGS if f in flags], "cores": physical_cores(),
        "versions": versions("torch", "transformers", "openvino", "onnxruntime"),
        "guard": guard or GUARD, "format": DECISION_FORMAT, "probe": digest({"texts": probe_texts()}),
    })


def decision_file(name: str, checkpoint_path: Path, guard: dict[str, float] | None = None) -> Path:
    return cache_root("auto") / f"{entry_name(name, 'auto', decision_key(checkpoint_path, guard))}.json"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def measure(builders: dict[tuple[str, str], Callable[[], Backend]], run: Callable[[Backend], np.ndarray],
            tokens: int, guard: dict[str, float], rounds: int = 2) -> dict:
    """Build, warm up and time each candidate (best of ``rounds``) on the probe; the fastest that passes wins.

    Candidates are measured one after another and released, so memory holds one extra copy at a
    time. A candidate that fails to build (e.g. a conversion error) is recorded and skipped.
    """
    rows, reference = [], None
    for (backend, dtype), build in builders.items():
        row: dict = {"backend": backend, "dtype": dtype}
        start = time.perf_counter()
        try:
            runner = build()
            row["build_s"] = round(time.perf_counter() - start, 2)
        except Exception as exc:  # noqa: BLE001  an unconvertible model must not stop the load: the candidate drops out
            log.warning("auto: %s %s unavailable: %s", backend, dtype, exc)
            rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        vectors = run(runner)  # warm-up (OpenVINO compiles shapes on first sight), and the vectors to check
        seconds = min(_timed(run, runner) for _ in range(rounds))
        del runner
        if reference is None:  # the first candidate is the torch fp32 reference
            reference = vectors
        cos = _cosines(vectors, reference)
        row.update(seconds=round(seconds, 4), tokens_per_s=round(tokens / seconds, 1),
                   mean_cosine=round(float(cos.mean()), 6), min_cosine=round(float(cos.min()), 6))
        row["passed"] = (backend, dtype) == REFERENCE or bool(
            cos.mean() >= guard["mean_cosine"] and cos.min() >= guard["min_cosine"])
        rows.append(row)
    chosen = min((r for r in rows if r.get("passed")), key=lambda r: r["seconds"])
    return {"backend": chosen["backend"], "dtype": chosen["dtype"], "candidates": rows}


def _timed(run: Callable[[Backend], np.ndarray], runner: Backend) -> float:
    start = time.perf_counter()
    run(runner)
    return time.perf_counter() - start


def choose(model: torch.nn.Module, checkpoint_path: Path, name: str, pooling: str, probe: list[list[int]],
           run: Callable[[Backend, list[list[int]]], np.ndarray], guard: dict[str, float] | None = None,
           flags: frozenset[str] | None = None) -> dict:
    """The cached decision for this model on this machine, or a fresh one (written atomically).

    ``model`` is the loaded float32 torch encoder (CPU); ``probe`` the tokenized probe texts;
    ``run(backend, ids)`` embeds token ids with a backend → pooled float32 vectors.
    """
    guard = guard or GUARD
    path = decision_file(name, checkpoint_path, guard)
    try:
        return {**json.loads(path.read_text()), "cached": True, "cache_file": str(path)}
    except (OSError, ValueError):
        pass  # absent or unreadable: decide (again)
    parameters = sum(p.numel() for p in model.parameters())
    ids = probe_prefix(probe, parameters)

    def builder(backend: str, dtype: str) -> Callable[[], Backend]:
        def build() -> Backend:
            if backend == "torch" and dtype == "bfloat16":
                return create_backend("torch", torch.bfloat16, copy.deepcopy(model).to(torch.bfloat16), "cpu",
                                      checkpoint_path, pooling, name)
            return create_backend(backend, getattr(torch, dtype), model, "cpu", checkpoint_path, pooling, name)
        return build

    start = time.perf_counter()
    decision = measure({c: builder(*c) for c in candidates(flags)}, lambda backend: run(backend, ids),
                       sum(map(len, ids)), guard)
    decision.update(probe={"texts": len(ids), "tokens": sum(map(len, ids))}, guard=guard,
                    probe_s=round(time.perf_counter() - start, 1), cpu=cpu_model(),
                    decided=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    write_text(path, json.dumps(decision, indent=2))
    log.info("auto: %s runs %s %s (probe %.1f s)", name, decision["backend"], decision["dtype"], decision["probe_s"])
    return {**decision, "cached": False, "cache_file": str(path)}
