"""ONNX Runtime (CPU) backend: export the encoder once, optimize it, optionally INT8-quantize it.

The exported graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-style
encoders) and returns, like the official pplx-embed ONNX export, ``[0] last_hidden_state``,
``[1] pooled`` (masked mean), ``[2] int8`` (``clamp(round(tanh(pooled)·127))``) and ``[3] binary``
(±1) — the last three only for mean-pooling models. The engine reads ``last_hidden_state`` and pools
spans itself (late chunking needs per-chunk spans).

Variants: ``onnx`` (fp32, graph-optimized) and ``onnx-int8`` (dynamic INT8 weight quantization with
per-channel scales: MatMul weights and the embedding table stored as int8, activations quantized
on the fly). Exports are cached under ``$PPLX_EMBED_CACHE/onnx`` (default
``~/.cache/pplx-embed/onnx``) keyed by checkpoint path, weight files' size and mtime, variant and
library versions; a cache entry appears atomically, so a crash mid-export leaves nothing behind.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from pplx_embed.engine.export import ExportKind, prepare_export
from pplx_embed.engine.threads import physical_cores
from pplx_embed.model.pooling import Span, pool_spans

KIND = ExportKind("onnx", "model.onnx", format=1, libraries=("torch", "onnxruntime"))
LARGE_MODEL_BYTES = 1 << 30  # above this, weights go to an external data file (protobuf's 2 GB limit)
OUTPUTS = ("last_hidden_state", "pooled", "int8", "binary")


def _uses_token_types(model: torch.nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(model.forward).parameters


class ExportedEncoder(torch.nn.Module):
    """The encoder plus the official export's extra outputs (pooled, int8, ±1 binary)."""

    def __init__(self, model: torch.nn.Module, pooled_outputs: bool):
        super().__init__()
        self.model = model
        self.pooled_outputs = pooled_outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if not self.pooled_outputs:
            return (hidden,)
        weights = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        int8 = torch.clamp(torch.round(torch.tanh(pooled) * 127.0), -128, 127).to(torch.int8)
        binary = torch.where(pooled >= 0, 1, -1).to(torch.int8)
        return hidden, pooled, int8, binary


def export_onnx(model: torch.nn.Module, target: Path, pooled_outputs: bool) -> Path:
    """Export ``model`` (a float32 transformers encoder) to ``target`` with dynamic batch and length."""
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("ONNX export needs the float32 model; load it with dtype='float32'")
    wrapper = ExportedEncoder(model, pooled_outputs).eval()
    ids = torch.full((2, 8), 100, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # trace the padded path: the mask must stay an input, never a constant
    inputs = {"input_ids": ids, "attention_mask": mask}
    if _uses_token_types(model):
        inputs["token_type_ids"] = torch.zeros_like(ids)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            wrapper, (), str(target), kwargs=inputs, dynamo=True,
            input_names=list(inputs), output_names=list(OUTPUTS if pooled_outputs else OUTPUTS[:1]),
            dynamic_shapes={name: {0: batch, 1: length} for name in inputs},
            external_data=size > LARGE_MODEL_BYTES,
        )
    return target


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic INT8 weight quantization (per-channel scales, signed int8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=source.stat().st_size + _external_bytes(source) > LARGE_MODEL_BYTES)
    return target


def _external_bytes(model_file: Path) -> int:
    return sum(p.stat().st_size for p in model_file.parent.glob(model_file.name + ".data"))


def prepare_onnx(model: torch.nn.Module, checkpoint_path: Path, variant: str = "onnx", pooling: str = "mean",
                 name: str | None = None) -> Path:
    """The cached ONNX file for this checkpoint and variant (``onnx-int8``: quantized from the cached fp32 export)."""
    pooled_outputs = pooling == "mean"
    return prepare_export(KIND, checkpoint_path, variant, name,
                          export=lambda target: export_onnx(model, target, pooled_outputs), quantize=quantize_int8,
                          facts={"pooling": pooling, "outputs": list(OUTPUTS if pooled_outputs else OUTPUTS[:1])})


class OnnxBackend:
    """Runs an exported encoder with ONNX Runtime on CPU (all graph optimizations, physical-core threads)."""

    def __init__(self, model_file: Path, variant: str = "onnx", threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.name = variant
        self.model_file = Path(model_file)

    def pool(self, input_ids: np.ndarray, attention_mask: np.ndarray, spans: list[list[Span]], mode: str) -> np.ndarray:
        """Pooled float32 vectors ``[total spans, dim]`` for one right-padded batch."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self.session.run(["last_hidden_state"], feeds)[0]
        return pool_spans(torch.from_numpy(hidden), spans, mode).numpy()
