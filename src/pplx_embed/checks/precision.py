"""The rule for what output is asked for: a known quantization, and Matryoshka dimensions the model can give.

Packed binary codes hold 8 dimensions per byte, so binary output (the Python API, the server's
``base64_binary``, every index) takes only dimensions that are a multiple of 8: 129 would silently
pad to the 17 bytes of 136.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pplx_embed.errors import InputError

QUANTIZATIONS: tuple[str, ...] = ("float", "int8", "binary", "ubinary", "pm1")
PACKED = ("binary", "ubinary")
MIN_DIMENSIONS = 128


def check_quantization(quantization: Any) -> str:
    """``quantization`` if it is a known output precision."""
    if quantization not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {str(quantization)[:40]!r}; choose one of {', '.join(QUANTIZATIONS)}")
    return quantization


def check_dimensions(dimensions: Any, full: int, quantization: str | None = None) -> int:
    """The Matryoshka dimensions to keep (``None``: all ``full``): an integer from 128 (or ``full``, if smaller) to
    ``full``, and a multiple of 8 when ``quantization`` packs bits."""
    if dimensions is None:
        dimensions = full
    elif isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)):
        raise InputError(f"dimensions must be an integer, got {str(dimensions)[:40]!r}")
    low = min(MIN_DIMENSIONS, full)
    if not low <= dimensions <= full:
        raise InputError(f"dimensions must be between {low} and {full} for this model, got {dimensions}")
    if quantization in PACKED and dimensions % 8:
        raise InputError(f"binary codes pack 8 dimensions per byte: dimensions must be a multiple of 8, "
                         f"got {dimensions}")
    return int(dimensions)
