"""An on-disk embedding cache so repeated evaluations of the same texts skip the forward pass.

An entry is keyed by the model (name + weight files), the encoding settings (precision,
truncation, plain or late chunking) and a SHA-256 of the exact texts in order; it holds
full-dimension pooled vectors (plain texts) or the output of ``Embedder.encode_contextual``.
Entries are written to a temporary file and renamed, so an interrupted run never leaves a corrupt entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pplx_embed.atomic import atomic_path


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def model_fingerprint(embedder) -> dict:
    """The model's name plus its weight files' names, sizes and mtimes (a retrained checkpoint misses)."""
    path = Path(embedder.checkpoint.path)
    weights = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    return {"name": embedder.name, "path": str(path),
            "weights": [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in weights]}


class EmbeddingCache:
    """Full-dimension embeddings on disk under ``root`` (``None`` disables caching; the usual folder is
    ``pplx_embed.options.cache_dir("eval")``)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    def key(self, embedder, texts: object, **settings: object) -> str:
        """The entry name for ``texts`` (a list of strings or of chunk lists) under ``settings``."""
        return _digest({"model": model_fingerprint(embedder), "settings": settings, "texts": _digest(texts)})

    def _load(self, key: str) -> np.ndarray | None:
        if self.root is None:
            return None
        path = self.root / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable entry (e.g. disk trouble): recompute and overwrite

    def _store(self, key: str, array: np.ndarray) -> None:
        if self.root is None:
            return
        with atomic_path(self.root / f"{key}.npy") as tmp, tmp.open("wb") as f:
            np.save(f, array, allow_pickle=False)

    def pooled(self, embedder, texts: list[str], truncation: str | None = None,
               show_progress_bar: bool = False) -> np.ndarray:
        """The pooled vectors ``Embedder.encode`` quantizes (before any Normalize module), cached.

        One forward pass serves every precision: ``quantize(pooled, q, d)`` equals
        ``encode(texts, q, d)`` for int8 and binary, and for float up to each row's positive scale.
        """
        key = self.key(embedder, texts, mode="pooled", truncation=truncation)
        cached = self._load(key)
        if cached is not None and cached.shape[0] == len(texts):
            self.hits += 1
            return cached
        self.misses += 1
        out = embedder.pooled(texts, show_progress_bar=show_progress_bar, truncation=truncation)
        self._store(key, out)
        return out

    def encode_contextual(self, embedder, documents: list[list[str]], quantization: str = "float",
                          truncation: str | None = None, show_progress_bar: bool = False) -> list[np.ndarray]:
        """``embedder.encode_contextual(documents, ...)`` at full dimension, cached (one entry per call)."""
        key = self.key(embedder, documents, mode="late", quantization=quantization, truncation=truncation)
        sizes = [len(d) for d in documents]
        cached = self._load(key)
        if cached is not None and cached.shape[0] == sum(sizes):
            self.hits += 1
            return np.split(cached, np.cumsum(sizes)[:-1])
        self.misses += 1
        out = embedder.encode_contextual(documents, quantization=quantization, truncation=truncation,
                                         show_progress_bar=show_progress_bar)
        self._store(key, np.concatenate(out))
        return out
