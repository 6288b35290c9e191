"""The backends by name: ``torch``, ``openvino``, ``onnx``, or an int8-compute variant (``engine.build`` picks one).

``auto`` measures, once per model and machine, which configuration is fastest while passing an
accuracy guard against torch fp32 (see ``engine.auto``). The explicit names always win:

- ``torch``: the reference numerics, every device; ``dtype`` casts the weights (bf16 on CPUs with
  native bf16 is the fast one), pooling accumulates in fp32.
- ``openvino``: the encoder converted to OpenVINO IR (CPU), fp32 or bf16 inference precision.
- ``onnx``: ONNX Runtime fp32 (CPU).
- ``openvino-int8`` / ``onnx-int8``: int8 *compute* (quantized weights and matrix multiplications):
  lossy, opt-in, never picked by ``auto``. Unrelated to the *output* ``quantization="int8"`` of
  ``encode``, which any backend produces from its float vectors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pplx_embed.engine.engine import Backend

CPU_ONLY = ("openvino", "openvino-int8", "onnx", "onnx-int8")
#: Under ``auto``, inputs longer than this run on torch even where OpenVINO won the (short-text) probe:
#: torch's fused SDPA attention was faster on every long input measured (docs/engine.md, "Long inputs").
LONG_INPUT_TOKENS = 4096
#: Parameters below which a model is "small": ``auto`` probes it on the whole probe set, and OpenVINO runs it in
#: throughput streams by default (its small matrix multiplications gain least from several threads each).
SMALL_MODEL = 100_000_000
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(flags: frozenset[str]) -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 is fast, elsewhere emulated."""
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def create_backend(name: str, dtype: torch.dtype, model: torch.nn.Module, device: str, checkpoint_path: Path,
                   pooling: str, model_name: str | None = None,
                   calibration: list[list[int]] | None = None, throughput: bool | None = None) -> Backend:
    """A ready backend of a concrete ``name`` (see ``engine.build.resolve_backend``) for a loaded model.

    ``torch`` runs ``model`` as loaded; the others export or convert it (``model`` must then be
    float32), cached on disk. ``calibration`` token ids calibrate ``openvino-int8``. ``throughput``
    runs OpenVINO in several streams (see :class:`~pplx_embed.engine.openvino_backend.OpenVinoBackend`);
    ``None``: where the model is small and the CPU has several cores (unless the runtime cannot).
    """
    if name == "torch":
        from pplx_embed.engine.torch_backend import TorchBackend

        return TorchBackend(model, device)
    if name.startswith("openvino"):
        from pplx_embed.engine.openvino_backend import OpenVinoBackend, prepare_openvino

        if throughput is None and sum(p.numel() for p in model.parameters()) >= SMALL_MODEL:
            throughput = False  # large models: one stream (None lets the backend use streams where it can)
        return OpenVinoBackend(prepare_openvino(model, checkpoint_path, name, model_name, calibration), name, dtype,
                               throughput=throughput)
    from pplx_embed.engine.onnx_backend import OnnxBackend, prepare_onnx

    return OnnxBackend(prepare_onnx(model, checkpoint_path, name, pooling, model_name), name)
