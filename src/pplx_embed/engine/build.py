"""The engine assembles itself: :func:`load_engine` is the one place that picks device, dtype and backend.

From a checkpoint and the options it decides the device (CUDA when present), whether ``auto`` can probe
(CPU, no explicit dtype, the float32 model plus a bf16 copy fit in memory), the measured choice (or the
explicit one), converts the model for OpenVINO / ONNX Runtime, routes long inputs to torch where ``auto``
chose OpenVINO, and frees the float32 torch weights that a converted backend no longer needs. What it
decided is an :class:`EngineInfo`, the record every output and ``/v1/models`` carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from pplx_embed.checks.texts import check_texts
from pplx_embed.engine.auto import choose, fits_in_memory, probe_texts
from pplx_embed.engine.backends import CPU_ONLY, LONG_INPUT_TOKENS, create_backend, native_bf16
from pplx_embed.engine.engine import Engine
from pplx_embed.engine.threads import cpu_flags
from pplx_embed.errors import InputError
from pplx_embed.model.adapter import adapter_view
from pplx_embed.model.checkpoint import Checkpoint
from pplx_embed.model.encoder import load_transformer
from pplx_embed.model.tokens import TextTokenizer
from pplx_embed.options import EmbedderOptions

log = logging.getLogger(__name__)
SHORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
AUTO_FIELDS = ("throughput", "skipped", "candidates", "probe", "probe_s", "guard", "decided", "cached", "cache_file")


@dataclass(frozen=True)
class EngineInfo:
    """How vectors are computed: what ``info()``, every output's metadata and ``/v1/models`` record."""

    backend: str  # the concrete backend: torch, openvino, onnx, openvino-int8, onnx-int8
    dtype: str  # compute dtype: float32, bfloat16, float16
    device: str
    requested: str  # the backend option as given (auto, or an explicit name)
    parameters: int
    streams: int = 1  # OpenVINO throughput streams
    long_inputs: int | None = None  # inputs over this many tokens run on torch
    auto: dict | None = None  # the auto decision (candidates measured, cache file); None when explicit

    def to_dict(self, measurements: bool = True) -> dict[str, Any]:
        """The record (``measurements=False`` leaves out the auto probe's figures, e.g. for ``/v1/models``)."""
        out: dict[str, Any] = {"backend": self.backend, "dtype": self.dtype, "requested": self.requested}
        if self.streams > 1:
            out["streams"] = self.streams
        if self.long_inputs is not None:
            out["long_inputs"] = {"backend": "torch", "over_tokens": self.long_inputs}
        if self.auto is not None and measurements:
            out["auto"] = {k: self.auto[k] for k in AUTO_FIELDS if k in self.auto}
        return out


@dataclass
class LoadedEngine:
    """A ready engine, what was decided, and the torch module where torch runs it (training reads it)."""

    engine: Engine
    info: EngineInfo
    model: torch.nn.Module | None


def pick_device(device: str | None) -> str:
    """``device`` if given and present on this machine, else CUDA when available, else CPU."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if kind.type == "cuda" and (kind.index or 0) >= torch.cuda.device_count():
        present = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise InputError(f"device {device!r} is not available: this machine has {present}; pass --device cpu")
    if kind.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    return device


def pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``dtype`` if given (a checked name of ``options.DTYPES``), else bf16 on GPU and fp32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, SHORT_DTYPES.get(dtype, dtype))


def resolve_backend(backend: str, device: str, dtype: torch.dtype) -> str:
    """The concrete backend for a checked ``backend`` option on ``device`` in ``dtype``, or an InputError saying
    what fits. ``auto`` resolves here only where nothing is probed: on GPU, or with an explicit dtype → ``torch``.
    """
    name = "torch" if backend == "auto" else backend
    if name in CPU_ONLY and device != "cpu":
        raise InputError(f"backend {name!r} runs on CPU only; pass device='cpu' or backend='torch'")
    if name.startswith("onnx") and dtype != torch.float32:
        raise InputError(f"backend {name!r} exports the float32 model; leave dtype unset or pass 'float32'")
    if name.startswith("openvino") and dtype not in (torch.float32, torch.bfloat16):
        raise InputError(f"backend {name!r} computes in float32 or bfloat16; pass dtype='float32' or 'bfloat16'")
    return name


def load_engine(checkpoint: Checkpoint, options: EmbedderOptions, tokens: TextTokenizer) -> LoadedEngine:
    """Load ``checkpoint`` into the engine ``options`` ask for (``auto``: the measured fastest one on this CPU).

    ``tokens`` tokenizes the probe (``auto``) and the int8 calibration texts and gives the padding id.
    """
    device = pick_device(options.device)
    # an adapter runs on torch over a base shared with the other adapters of it: nothing to probe or convert
    probing = options.backend == "auto" and options.dtype is None and device == "cpu" and not options.adapter
    auto = None
    if probing and (reason := fits_in_memory(checkpoint.path, checkpoint.config)):
        probing = False
        auto = {"backend": "torch", "dtype": "bfloat16" if native_bf16(cpu_flags()) else "float32",
                "candidates": [], "skipped": reason}
        log.warning("auto: no probe for %s: %s; running torch %s", checkpoint.name, reason, auto["dtype"])
    dtype = torch.float32 if probing else pick_dtype(auto["dtype"] if auto else options.dtype, device)
    backend = "auto" if probing else resolve_backend("torch" if options.adapter else options.backend, device, dtype)
    # exports and conversions start from the float32 model
    model = _load_model(checkpoint, options.adapter, dtype if backend == "torch" else torch.float32, device)
    parameters = sum(p.numel() for p in model.parameters())
    throughput: bool | None = None  # OpenVINO streams: its default layout, or what auto measured
    if probing:
        auto = choose(checkpoint, model, _probe_ids(tokens), tokens.pad_id)
        backend, dtype, throughput = auto["backend"], getattr(torch, auto["dtype"]), bool(auto.get("throughput"))
        if backend == "torch" and dtype != torch.float32:
            model.to(dtype)
    calibration = _probe_ids(tokens) if backend.endswith("-int8") else None
    main = create_backend(backend, dtype, model, device, checkpoint.path, checkpoint.pooling, checkpoint.name,
                          calibration, throughput)
    long_backend = long_inputs = None
    if auto is not None and backend == "openvino" and checkpoint.max_length > LONG_INPUT_TOKENS:
        long_inputs = LONG_INPUT_TOKENS
        long_backend = create_backend("torch", dtype, model.to(dtype), device, checkpoint.path, checkpoint.pooling,
                                      checkpoint.name)
    elif backend != "torch":
        model.to("meta")  # the converted model holds the weights: free the float32 copy
        model = None
    engine = Engine(main, checkpoint.dimension, tokens.pad_id, checkpoint.pooling, options.max_batch_tokens,
                    options.max_batch_size, long_backend, long_inputs)
    info = EngineInfo(backend, str(dtype).removeprefix("torch."), device, options.backend, parameters,
                      getattr(main, "streams", 1), long_inputs, auto)
    return LoadedEngine(engine, info, model)


def _load_model(checkpoint: Checkpoint, adapter: str | None, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The checkpoint's encoder, or with a LoRA ``adapter`` the view of it over a base shared by its adapters."""
    if adapter is None:
        return load_transformer(checkpoint.path, checkpoint.config, dtype, device)
    return adapter_view(adapter, (str(checkpoint.path), str(dtype), device),
                        lambda: load_transformer(checkpoint.path, checkpoint.config, dtype, device))


def _probe_ids(tokens: TextTokenizer) -> list[list[int]]:
    """The shipped probe / calibration texts as model inputs (cut to the context)."""
    return tokens.tokenize(check_texts(probe_texts()), truncation="right")
