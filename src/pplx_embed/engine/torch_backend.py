"""PyTorch backend: runs the encoder on padded batches and pools spans on the device."""

from __future__ import annotations

import os

import numpy as np
import torch

from pplx_embed.engine.threads import physical_cores
from pplx_embed.model.pooling import Span, pool_spans


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
