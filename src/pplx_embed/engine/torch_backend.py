"""PyTorch backend: runs the encoder on padded batches and pools spans on the device."""

from __future__ import annotations

import os

import numpy as np
import torch

from pplx_embed.engine.threads import physical_cores
from pplx_embed.errors import InputError
from pplx_embed.model.pooling import Span, pool_spans


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


def pick_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``dtype`` if given (name or torch dtype), else bf16 on GPU and fp32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]


class TorchBackend:
    """Encoder forward pass + span pooling with ``torch`` (SDPA attention, inference mode)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str):
        self.model = model
        self.device = device
        if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(physical_cores())  # intra-op threads = physical cores, unless the user chose

    def pool(self, input_ids: np.ndarray, attention_mask: np.ndarray, spans: list[list[Span]], mode: str) -> np.ndarray:
        """Pooled float32 vectors ``[total spans, dim]`` for one right-padded batch."""
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return pool_spans(hidden, spans, mode).cpu().numpy()
