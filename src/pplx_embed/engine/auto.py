"""``backend="auto"``: the fastest configuration that passes an accuracy guard, measured once per machine.

On first use of a model on a machine, each candidate configuration the CPU supports (torch fp32,
torch bf16 and OpenVINO bf16 only with native bf16, OpenVINO fp32; OpenVINO in one stream and, for
small models on CPUs with several cores, in throughput streams) embeds a fixed probe set of real
texts shipped with the package (``probe_texts.json``: MedQuAD questions and answers, CC BY 4.0).
The fastest one whose vectors stay within the guard of torch fp32's (mean cosine ≥ 0.9995, min ≥
0.999) wins. The decision is cached as JSON under ``$PPLX_EMBED_CACHE/auto`` keyed by the checkpoint
files, the CPU model, flags and cores, and the library versions, so a changed checkpoint, machine or
upgrade decides again. int8 compute is never a candidate (lossy: explicit opt-in only).
"""

from __future__ import annotations

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
from pplx_embed.engine.backends import SMALL_MODEL, create_backend, native_bf16
from pplx_embed.engine.cache import cache_root, checkpoint_files, digest, entry_name, versions
from pplx_embed.engine.engine import Backend, Engine
from pplx_embed.engine.threads import NOTABLE_FLAGS, cpu_flags, cpu_model, physical_cores
from pplx_embed.model.checkpoint import Checkpoint
from pplx_embed.model.encoder import load_transformer
from pplx_embed.model.pooling import Sequence

log = logging.getLogger(__name__)

GUARD = {"mean_cosine": 0.9995, "min_cosine": 0.999}
#: A candidate: ``(backend, dtype, throughput)``; ``throughput`` runs OpenVINO in several streams.
Candidate = tuple[str, str, bool]
REFERENCE: Candidate = ("torch", "float32", False)
DECISION_FORMAT = 2  # bump when candidates, probe or timing change
PROBE_FILE = Path(__file__).with_name("probe_texts.json")
PROBE_TOKENS = {"small": 2048, "large": 768}
#: Memory a candidate needs on top of the loaded float32 model, in bytes per parameter: torch bf16 loads a bf16
#: copy; OpenVINO converts (traced graph and IR in memory) and compiles its own copy (fp32 4 B, bf16 2 B); rounded
#: up from measurements (docs/engine.md, "Measurements behind the code").
EXTRA_BYTES_PER_PARAMETER = {("torch", "bfloat16"): 2, ("openvino", "float32"): 12, ("openvino", "bfloat16"): 10}


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


def candidates(flags: frozenset[str] | None = None, cores: int | None = None, small: bool = True) -> list[Candidate]:
    """The configurations worth measuring on this CPU, the torch fp32 reference first.

    OpenVINO's throughput streams only for ``small`` models: they keep a second compiled copy of the
    weights, and large models' matrix multiplications keep every thread of one stream busy anyway.
    """
    flags = cpu_flags() if flags is None else flags
    dtypes = ["float32", "bfloat16"] if native_bf16(flags) else ["float32"]
    found = [("torch", dtype, False) for dtype in dtypes]
    if util.find_spec("openvino") is not None:
        layouts = [False, True] if small and (cores or physical_cores()) > 1 else [False]
        found += [("openvino", dtype, throughput) for dtype in dtypes for throughput in layouts]
    return found


def available_memory() -> int | None:
    """Bytes the kernel can still hand out (``MemAvailable``), or None where ``/proc/meminfo`` is absent."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def float32_bytes(checkpoint_path: Path, config: dict) -> int:
    """Size of a checkpoint's weights in float32 (its weight files, doubled when stored in 16 bits)."""
    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    files = checkpoint_files(checkpoint_path)
    weights = sum(size for name, size, _ in files if name.endswith((".safetensors", ".bin")))
    return weights * (2 if stored in ("bfloat16", "float16") else 1)


def fits_in_memory(checkpoint_path: Path, config: dict) -> str | None:
    """Why ``auto`` cannot probe this checkpoint here, or None.

    Probing holds the float32 model and a bf16 copy (1.5x the float32 size); that must fit in 80% of
    the available memory (a 4B model, 16 GB in float32, needs a machine with 30 GB free).
    """
    need, room = float32_bytes(checkpoint_path, config) * 3 // 2, available_memory()
    if room is None or need <= 0.8 * room:
        return None
    return (f"probing holds the float32 model and a bf16 copy ({need / 2**30:.1f} GiB) and only "
            f"{room / 2**30:.1f} GiB is available")


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


def measure(builders: dict[Candidate, Callable[[], Backend]], run: Callable[[Backend], np.ndarray],
            tokens: int, guard: dict[str, float], rounds: int = 2, interleave: bool = False) -> dict:
    """Build, warm up and time each candidate on the probe; the fastest that passes the guard wins.

    By default candidates are timed one after another (best of ``rounds``) and released, so memory
    holds one extra copy at a time. With ``interleave`` (small models) all are held, the rounds
    alternate between them and the median round counts, so that a machine whose speed drifts
    (shared hosts, docs/engine.md "Benchmarks") slows every candidate alike. A candidate that fails
    to build (e.g. a conversion error) is recorded and skipped.
    """
    rows, reference, held = [], None, {}
    for key, build in builders.items():
        backend, dtype, throughput = key
        row: dict = {"backend": backend, "dtype": dtype, "throughput": throughput}
        start = time.perf_counter()
        try:
            runner = build()
            row["build_s"] = round(time.perf_counter() - start, 2)
        except Exception as exc:  # noqa: BLE001  an unconvertible model must not stop the load: the candidate drops out
            log.warning("auto: %s %s%s unavailable: %s", backend, dtype, " (throughput)" * throughput, exc)
            rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        vectors = run(runner)  # warm-up (OpenVINO compiles shapes on first sight), and the vectors to check
        if interleave:
            held[len(rows)] = runner
        else:
            row["seconds"] = min(_timed(run, runner) for _ in range(rounds))
        del runner
        if reference is None:  # the first candidate is the torch fp32 reference
            reference = vectors
        cos = _cosines(vectors, reference)
        row.update(mean_cosine=round(float(cos.mean()), 6), min_cosine=round(float(cos.min()), 6))
        row["passed"] = key == REFERENCE or bool(
            cos.mean() >= guard["mean_cosine"] and cos.min() >= guard["min_cosine"])
        rows.append(row)
    timings: dict[int, list[float]] = {i: [] for i in held}
    for _ in range(rounds if held else 0):
        for i, runner in held.items():
            timings[i].append(_timed(run, runner))
    held.clear()
    for i, seconds in timings.items():
        rows[i]["seconds"] = float(np.median(seconds))
    for row in rows:
        if "seconds" in row:
            row.update(seconds=round(row["seconds"], 4), tokens_per_s=round(tokens / row["seconds"], 1))
    chosen = min((r for r in rows if r.get("passed")), key=lambda r: r["seconds"])
    return {"backend": chosen["backend"], "dtype": chosen["dtype"], "throughput": chosen["throughput"],
            "candidates": rows}


def _timed(run: Callable[[Backend], np.ndarray], runner: Backend) -> float:
    start = time.perf_counter()
    run(runner)
    return time.perf_counter() - start


def choose(checkpoint: Checkpoint, model: torch.nn.Module, probe: list[list[int]], pad_id: int,
           guard: dict[str, float] | None = None, flags: frozenset[str] | None = None) -> dict:
    """The cached decision for this checkpoint on this machine, or a fresh one (written atomically).

    ``model`` is the loaded float32 torch encoder (CPU), ``probe`` the tokenized probe texts. Each candidate is
    built here (torch bf16 loads its own copy of the checkpoint) and embeds the probe through an
    :class:`~pplx_embed.engine.engine.Engine`. A candidate that needs more memory than is available
    (``EXTRA_BYTES_PER_PARAMETER``) is not built; its row says why.
    """
    guard = guard or GUARD
    path = decision_file(checkpoint.name, checkpoint.path, guard)
    try:
        return {**json.loads(path.read_text()), "cached": True, "cache_file": str(path)}
    except (OSError, ValueError):
        pass  # absent or unreadable: decide (again)
    parameters = sum(p.numel() for p in model.parameters())
    ids = probe_prefix(probe, parameters)
    sequences = [Sequence(x) for x in ids]

    def run(backend: Backend) -> np.ndarray:
        return np.concatenate(Engine(backend, checkpoint.dimension, pad_id, checkpoint.pooling).run(sequences))

    def builder(backend: str, dtype: str, throughput: bool) -> Callable[[], Backend]:
        def build() -> Backend:
            if backend == "torch" and dtype == "bfloat16":
                copy = load_transformer(checkpoint.path, checkpoint.config, torch.bfloat16, "cpu")
                return create_backend("torch", torch.bfloat16, copy, "cpu", checkpoint.path, checkpoint.pooling,
                                      checkpoint.name)
            return create_backend(backend, getattr(torch, dtype), model, "cpu", checkpoint.path, checkpoint.pooling,
                                  checkpoint.name, throughput=throughput)
        return build

    start = time.perf_counter()
    small = parameters < SMALL_MODEL
    room, builders, skipped = available_memory(), {}, []
    for c in candidates(flags, small=small):
        need = EXTRA_BYTES_PER_PARAMETER.get(c[:2], 0) * parameters
        if room is not None and need > room:
            skipped.append({"backend": c[0], "dtype": c[1], "throughput": c[2],
                            "skipped": f"needs about {need / 2**30:.1f} GiB more memory, {room / 2**30:.1f} GiB free"})
        else:
            builders[c] = builder(*c)
    decision = measure(builders, run, sum(map(len, ids)), guard,
                       rounds=5 if small else 2, interleave=small)
    decision["candidates"] += skipped
    decision.update(probe={"texts": len(ids), "tokens": sum(map(len, ids))}, guard=guard,
                    probe_s=round(time.perf_counter() - start, 1), cpu=cpu_model(),
                    decided=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    write_text(path, json.dumps(decision, indent=2))
    log.info("auto: %s runs %s %s%s (probe %.1f s)", checkpoint.name, decision["backend"], decision["dtype"],
             " (throughput)" * decision["throughput"], decision["probe_s"])
    return {**decision, "cached": False, "cache_file": str(path)}
