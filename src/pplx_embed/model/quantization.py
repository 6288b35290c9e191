"""Output precisions of pplx-embed models, exactly as the model cards define them.

* ``float``   – the pooled vector (float32).
* ``int8``    – ``clamp(round(tanh(x) * 127), -128, 127)``; unnormalized, compare with cosine.
* ``binary``  – 1 where ``x >= 0`` else 0, packed MSB-first with ``numpy.packbits`` (dim/8 bytes).
* ``ubinary`` – alias of ``binary`` (sentence-transformers' name for packed unsigned bits).
* ``pm1``     – the same bits as a ±1 int8 vector (the official ONNX export's binary output).

Matryoshka truncation (``dimensions``) always happens *before* quantization.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from pplx_embed.checks.precision import check_quantization
from pplx_embed.errors import InputError

Quantization = Literal["float", "int8", "binary", "ubinary", "pm1"]


def truncate(x: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` coordinates (MRL). ``None`` keeps all."""
    return x if dimensions is None else x[..., :dimensions]


def to_int8(x: np.ndarray) -> np.ndarray:
    """``clamp(round(tanh(x) * 127), -128, 127)`` as int8 (round half to even, like torch)."""
    y = np.round(np.tanh(x.astype(np.float32)) * np.float32(127.0))
    return np.clip(y, -128, 127).astype(np.int8)


def to_bits(x: np.ndarray) -> np.ndarray:
    """Sign bits: True where ``x >= 0``."""
    return x >= 0


def to_binary(x: np.ndarray) -> np.ndarray:
    """Sign bits packed MSB-first along the last axis (uint8, dim/8 bytes)."""
    return np.packbits(to_bits(x), axis=-1)


def to_pm1(x: np.ndarray) -> np.ndarray:
    """Sign bits as a ±1 int8 vector."""
    return np.where(to_bits(x), 1, -1).astype(np.int8)


def quantize(x: np.ndarray, quantization: str = "float", dimensions: int | None = None) -> np.ndarray:
    """Truncate to ``dimensions`` (MRL) and convert to the requested precision."""
    x = truncate(np.asarray(x, dtype=np.float32), dimensions)
    q = check_quantization(quantization)
    if q == "float":
        return np.ascontiguousarray(x)
    if q == "int8":
        return to_int8(x)
    if q in ("binary", "ubinary"):
        return to_binary(x)
    return to_pm1(x)


def outputs(pooled: np.ndarray, precisions: Iterable[str], dimensions: int | None = None,
            normalize: bool = False) -> dict[str, np.ndarray]:
    """The one place outputs are derived: raw pooled vectors → each of ``precisions`` at ``dimensions``.

    ``pooled`` is the raw vector cut to ``dimensions``; ``float`` is the same, L2-normalized first when the
    model's pipeline normalizes (sentence-transformers ``Normalize``: the cut then follows, as there);
    ``int8`` / ``binary`` / ``pm1`` are computed from the raw vector (normalizing would crush the int8
    range; signs and cosines are unaffected).
    """
    pooled = np.asarray(pooled, dtype=np.float32)
    out = {}
    for precision in precisions:
        if precision == "pooled":
            out[precision] = quantize(pooled, "float", dimensions)
        elif precision == "float" and normalize:
            unit = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            out[precision] = quantize(unit, "float", dimensions)
        else:
            out[precision] = quantize(pooled, precision, dimensions)
    return out


def unpack_binary(packed: np.ndarray, dimensions: int | None = None) -> np.ndarray:
    """Packed bits back to a ±1 int8 vector (inverse of :func:`to_binary` on the signs)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=dimensions)
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of float, int8 or ±1 vectors (rows of ``a`` × rows of ``b``)."""
    a = np.atleast_2d(np.asarray(a)).astype(np.float32)
    b = np.atleast_2d(np.asarray(b)).astype(np.float32)
    if a.shape[-1] != b.shape[-1]:
        raise InputError(f"cannot compare vectors of {a.shape[-1]} and {b.shape[-1]} dimensions")
    an = np.linalg.norm(a, axis=-1, keepdims=True)
    bn = np.linalg.norm(b, axis=-1, keepdims=True)
    return (a / np.maximum(an, 1e-12)) @ (b / np.maximum(bn, 1e-12)).T


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distance between packed binary vectors (uint8 rows)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.uint8))
    b = np.atleast_2d(np.asarray(b, dtype=np.uint8))
    if a.shape[-1] != b.shape[-1]:
        raise InputError(f"cannot compare packed vectors of {a.shape[-1]} and {b.shape[-1]} bytes")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int64)
    for i, row in enumerate(a):
        out[i] = _POPCOUNT[np.bitwise_xor(row[None, :], b)].sum(axis=-1)
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise similarity matching how each precision is meant to be compared.

    Packed binary (uint8) rows use Hamming distance mapped to the cosine of the ±1 vectors,
    ``1 - 2 * hamming / dim``; float and int8 rows use cosine similarity.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        dim = 8 * np.atleast_2d(a).shape[-1]
        return (1.0 - 2.0 * hamming_distance(a, b) / dim).astype(np.float32)
    return cosine_similarity(a, b)
