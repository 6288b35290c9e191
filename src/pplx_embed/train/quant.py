"""Quantization-aware training: the runtime's int8 / binary outputs with straight-through gradients.

The forward pass produces exactly what inference stores (``model.quantization``): int8 is
``round(tanh(x) * 127)`` and binary is the sign (``x >= 0`` → +1, else −1). Rounding and sign have
zero gradient almost everywhere, so the backward pass uses the straight-through estimator: the
gradient of the smooth surrogate (``tanh(x) * 127``, resp. ``tanh(x)``) flows through unchanged.
"""

from __future__ import annotations

import torch

from pplx_embed.errors import InputError

TRAIN_QUANTIZATIONS = ("float", "int8", "binary")


def ste_int8(x: torch.Tensor) -> torch.Tensor:
    """``round(tanh(x) * 127)`` (clamped to int8) forward; gradient of ``tanh(x) * 127`` backward."""
    smooth = torch.tanh(x.float()) * 127.0
    hard = smooth.round().clamp(-128, 127)
    return smooth + (hard - smooth).detach()


def ste_binary(x: torch.Tensor) -> torch.Tensor:
    """±1 signs (``x >= 0`` → +1) forward; gradient of ``tanh(x)`` backward."""
    smooth = torch.tanh(x.float())
    hard = torch.where(x >= 0, 1.0, -1.0)
    return smooth + (hard - smooth).detach()


def fake_quantize(x: torch.Tensor, quantization: str) -> torch.Tensor:
    """The embedding as the runtime would store it at ``quantization``, differentiable via STE."""
    if quantization == "float":
        return x.float()
    if quantization == "int8":
        return ste_int8(x)
    if quantization == "binary":
        return ste_binary(x)
    raise InputError(f"unknown training quantization {quantization!r}; choose one of {', '.join(TRAIN_QUANTIZATIONS)}")
