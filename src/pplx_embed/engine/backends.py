"""Choosing a backend: ``auto`` (the default), ``torch``, ``onnx`` (fp32) or ``onnx-int8``.

``auto`` means ``torch`` — the reference numerics on every
device, with no export step. The ONNX variants run on CPU only and are opt-in: the first use of a
checkpoint exports it (cached on disk, see ``engine.onnx_backend``), and ``onnx-int8`` changes the
vectors slightly (mean cosine to fp32 ≥ 0.99 on MiniLM, see docs/benchmarks/engine-cpu.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pplx_embed.engine.engine import Backend

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def resolve_backend(backend: str | None, device: str, dtype: torch.dtype) -> str:
    """The concrete backend name for ``backend`` on ``device``, or a ValueError saying what fits."""
    name = (backend or "auto").lower()
    if name == "auto":
        name = "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if name.startswith("onnx"):
        if device != "cpu":
            raise ValueError(f"backend {name!r} runs on CPU only; pass device='cpu' or backend='torch'")
        if dtype != torch.float32:
            raise ValueError(f"backend {name!r} exports the float32 model; leave dtype unset or pass 'float32'")
    return name


def create_backend(name: str, model: torch.nn.Module, device: str, checkpoint_path: Path,
                   pooling: str, model_name: str | None = None) -> Backend:
    """A ready backend of a concrete ``name`` (see :func:`resolve_backend`) for a loaded model."""
    if name == "torch":
        from pplx_embed.engine.torch_backend import TorchBackend

        return TorchBackend(model, device)
    from pplx_embed.engine.onnx_backend import OnnxBackend, prepare_onnx

    return OnnxBackend(prepare_onnx(model, checkpoint_path, name, pooling, model_name), name)
