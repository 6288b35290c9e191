"""The Python API: ``Embedder(model).encode(texts)`` and ``encode_contextual(docs)``.

An :class:`Embedder` is a tokenizer (:class:`~pplx_embed.model.tokens.TextTokenizer`), a loaded engine
(:func:`~pplx_embed.engine.build.load_engine`) and the output precisions
(:func:`~pplx_embed.model.quantization.outputs`). Data flows one way: checked texts → token sequences →
engine batches → pooled vectors → Matryoshka cut → quantization. Each public method checks its input once
(``pplx_embed.checks``); everything below trusts the checked types.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from pplx_embed.checks.precision import check_dimensions, check_quantization
from pplx_embed.checks.texts import Documents, Texts, check_documents, check_texts, check_truncation
from pplx_embed.engine.build import EngineInfo, load_engine
from pplx_embed.engine.engine import Engine
from pplx_embed.errors import InputError
from pplx_embed.model.checkpoint import Checkpoint, load_checkpoint
from pplx_embed.model.pooling import Sequence as TokenSequence
from pplx_embed.model.quantization import outputs, similarity
from pplx_embed.model.tokens import CHARS_PER_TOKEN, TextTokenizer
from pplx_embed.options import EmbedderOptions

Truncation = Literal["right", "left"] | None
#: What :meth:`Embedder.encode_all` can derive: the raw pooled vector and every output quantization.
PRECISIONS = ("pooled", "float", "int8", "binary", "ubinary", "pm1")

__all__ = ["CHARS_PER_TOKEN", "PRECISIONS", "Embedder", "EmbedderLike"]


@runtime_checkable
class EmbedderLike(Protocol):
    """What the index, eval and batch jobs need of "an embedder": an in-process :class:`Embedder`, or the
    server's model seen from a worker thread (``serve.pipeline.LoopEmbedder``)."""

    name: str
    dimension: int
    max_length: int

    def encode_all(self, texts: Any, precisions: Iterable[str], dimensions: int | None = None, *,
                   truncation: Truncation = None, show_progress_bar: bool = False) -> dict[str, np.ndarray]: ...

    def encode_contextual_all(self, documents: Any, precisions: Iterable[str], dimensions: int | None = None, *,
                              truncation: Truncation = None,
                              show_progress_bar: bool = False) -> dict[str, list[np.ndarray]]: ...


def check_outputs(precisions: Iterable[str], dimensions: Any, full: int) -> tuple[tuple[str, ...], int]:
    """The outputs asked of :meth:`Embedder.encode_all`: a non-empty selection of :data:`PRECISIONS` and the
    Matryoshka dimensions every one of them can be cut to."""
    precisions = (precisions,) if isinstance(precisions, str) else tuple(precisions)
    if not precisions:
        raise InputError(f"ask for at least one precision of {', '.join(PRECISIONS)}")
    for p in precisions:
        dimensions = check_dimensions(dimensions, full, check_quantization("float" if p == "pooled" else p))
    return precisions, dimensions


class Embedder:
    """An embedding model ready to encode: checkpoint, tokenizer and engine.

    ``model`` is an alias (``pplx-embed-v1-0.6b``, ``pplx-embed-context-v1-4b``, ``minilm`` …), a
    checkpoint directory or a hub id; ``None`` picks the default (``PPLX_EMBED_MODEL``, else
    pplx-embed-v1-0.6b when cached, else the bundled all-MiniLM-L6-v2). The keyword arguments are
    the fields of :class:`~pplx_embed.options.EmbedderOptions` (unset ones come from ``PPLX_EMBED_*``
    variables, then defaults); pass ``options=`` to give them all at once.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, options: EmbedderOptions | None = None,
                 **knobs: Any):
        if options is None:
            options = EmbedderOptions.from_env(model=None if model is None else str(model), **knobs)
        elif model is not None or knobs:
            raise InputError("pass either options= or the model and its keyword options, not both")
        self.options = options
        self.checkpoint: Checkpoint = load_checkpoint(options.model)
        self.tokens = TextTokenizer(self.checkpoint.path, self.checkpoint.max_length)
        loaded = load_engine(self.checkpoint, options, self.tokens)
        self.engine: Engine = loaded.engine
        #: how vectors are computed (backend, dtype, device, the auto decision)
        self.engine_info: EngineInfo = loaded.info
        #: the torch module where torch runs the model (training reads it), else None
        self.model: torch.nn.Module | None = loaded.model

    # ---- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The model's recorded name (alias, hub id or directory, ``+adapter`` with one); every result carries it."""
        return self.checkpoint.name + (f"+{self.options.adapter}" if self.options.adapter else "")

    @property
    def dimension(self) -> int:
        return self.checkpoint.dimension

    @property
    def max_length(self) -> int:
        """Longest input in tokens, special tokens included."""
        return self.checkpoint.max_length

    @property
    def max_chars(self) -> int:
        """Longest text tokenized, in characters (``CHARS_PER_TOKEN`` per context token)."""
        return self.tokens.max_chars

    @property
    def device(self) -> str:
        return self.engine_info.device

    @property
    def tokenizer(self):
        """The checkpoint's Hugging Face tokenizer."""
        return self.tokens.tokenizer

    def info(self) -> dict:
        """Dimensions, context, parameter count, dtype and pooling of the loaded model."""
        engine = self.engine_info
        return {
            "model": self.name, "path": str(self.checkpoint.path), "dimension": self.dimension,
            "max_length": self.max_length, "parameters": engine.parameters, "dtype": engine.dtype,
            "device": engine.device, "backend": engine.backend, "pooling": self.checkpoint.pooling,
            "normalize": self.checkpoint.normalize, "architecture": self.checkpoint.config.get("model_type"),
            "bidirectional": self.checkpoint.is_pplx or None, "engine": engine.to_dict(),
        }

    # ---- tokens ------------------------------------------------------------------------------
    def _truncation(self, truncation: Any) -> str | None:
        return check_truncation(truncation) or self.options.truncation

    def tokenize(self, texts: str | list[str], truncation: Truncation = None) -> list[list[int]]:
        """Model input ids for each text (special tokens included), checked against the context."""
        return self.tokens.tokenize(check_texts(texts), self._truncation(truncation))

    def count_tokens(self, texts: str | list[str]) -> list[int]:
        """Tokens each text costs as a model input (before any truncation)."""
        return self.tokens.count(check_texts(texts))

    def prepare(self, texts: str | list[str] | Texts, truncation: Truncation = None) -> list[TokenSequence]:
        """The engine inputs of :meth:`encode`: one tokenized sequence per (checked) text.

        ``engine.run(prepare(texts))`` (or any scheduler of the same sequences) then :meth:`outputs`
        gives exactly what :meth:`encode_all` returns.
        """
        return self.tokens.sequences(check_texts(texts), self._truncation(truncation))

    def prepare_contextual(self, documents: Any,
                           truncation: Truncation = None) -> tuple[list[TokenSequence], list[int]]:
        """The engine inputs of :meth:`encode_contextual`: the sequences and the document each belongs to."""
        return self.tokens.contextual(check_documents(documents), self._truncation(truncation))

    # ---- embeddings --------------------------------------------------------------------------
    def outputs(self, pooled: np.ndarray, precisions: tuple[str, ...], dimensions: int) -> dict[str, np.ndarray]:
        """Pooled vectors → each checked precision at ``dimensions`` (see ``model.quantization.outputs``)."""
        return outputs(pooled, precisions, None if dimensions == self.dimension else dimensions,
                       self.checkpoint.normalize)

    def encode(self, texts: str | list[str], quantization: str = "float", dimensions: int | None = None,
               batch_size: int | None = None, show_progress_bar: bool = False,
               truncation: Truncation = None) -> np.ndarray:
        """Embed texts → ``[n, dim]`` float32, int8, packed binary uint8 (``[n, dim/8]``) or ±1 int8.

        ``dimensions`` keeps the first d coordinates (Matryoshka) before quantizing. ``batch_size``
        caps sequences per batch; batches are also bounded by the engine's token budget. A single
        string returns a single vector.
        """
        out = self.encode_all(texts, (quantization,), dimensions, batch_size=batch_size,
                              show_progress_bar=show_progress_bar, truncation=truncation)[quantization]
        return out[0] if isinstance(texts, str) else out

    def encode_all(self, texts: str | list[str] | Texts, precisions: Iterable[str], dimensions: int | None = None, *,
                   batch_size: int | None = None, show_progress_bar: bool = False,
                   truncation: Truncation = None) -> dict[str, np.ndarray]:
        """Several outputs of the same texts from one forward pass: ``{precision: [n, ...] array}``.

        ``precisions`` are any of ``pooled`` (the raw vector every output derives from), ``float``,
        ``int8``, ``binary``, ``pm1``; each equals what :meth:`encode` returns for it, byte for byte.
        """
        precisions, dimensions = check_outputs(precisions, dimensions, self.dimension)
        sequences = self.prepare(texts, truncation)
        pooled = self.engine.run(sequences, batch_size, show_progress_bar)
        pooled = np.concatenate(pooled) if pooled else np.zeros((0, self.dimension), np.float32)
        return self.outputs(pooled, precisions, dimensions)

    def pooled(self, texts: str | list[str], batch_size: int | None = None, show_progress_bar: bool = False,
               truncation: Truncation = None) -> np.ndarray:
        """The raw pooled vectors ``[n, dim]`` float32 that every precision of :meth:`encode` derives from.

        ``quantize(pooled, q, d)`` equals ``encode(texts, q, d)`` for int8 and binary; ``float`` output
        is this, L2-normalized when the model's pipeline normalizes (sentence-transformers ``Normalize``).
        """
        return self.encode_all(texts, ("pooled",), batch_size=batch_size, show_progress_bar=show_progress_bar,
                               truncation=truncation)["pooled"]

    def encode_contextual(self, documents: list[list[str]], quantization: str = "float",
                          dimensions: int | None = None, batch_size: int | None = None,
                          show_progress_bar: bool = False, truncation: Truncation = None) -> list[np.ndarray]:
        """Late chunking: one array ``[n_chunks, dim]`` per document, chunks in order.

        Each document's chunks are joined with the separator token and embedded in one forward pass
        (macro-windows beyond the context window, see ``model.late_chunking``); each chunk's vector
        is the mean of its own tokens' states. An empty chunk gives a zero vector.
        """
        return self.encode_contextual_all(documents, (quantization,), dimensions,
                                          batch_size=batch_size, show_progress_bar=show_progress_bar,
                                          truncation=truncation)[quantization]

    def encode_contextual_all(self, documents: list[list[str]] | Documents, precisions: Iterable[str],
                              dimensions: int | None = None, *, batch_size: int | None = None,
                              show_progress_bar: bool = False,
                              truncation: Truncation = None) -> dict[str, list[np.ndarray]]:
        """Several outputs of late chunking from one pass: ``{precision: [one array per document]}``."""
        precisions, dimensions = check_outputs(precisions, dimensions, self.dimension)
        documents = check_documents(documents)
        sequences, owners = self.prepare_contextual(documents, truncation)
        pooled = self.engine.run(sequences, batch_size, show_progress_bar, desc="documents")
        return self.contextual_outputs(pooled, owners, len(documents), precisions, dimensions)

    def contextual_outputs(self, pooled: list[np.ndarray], owners: list[int], documents: int,
                           precisions: tuple[str, ...], dimensions: int) -> dict[str, list[np.ndarray]]:
        """The pooled chunk vectors of :meth:`prepare_contextual`'s sequences → per precision, one array per
        document."""
        if not documents:
            return {p: [] for p in precisions}
        parts: list[list[np.ndarray]] = [[] for _ in range(documents)]
        for d, vectors in zip(owners, pooled):
            parts[d].append(vectors)
        sizes = [sum(len(v) for v in p) for p in parts]
        flat = np.concatenate([v for p in parts for v in p])
        split = np.cumsum(sizes)[:-1]
        return {p: np.split(v, split) for p, v in self.outputs(flat, precisions, dimensions).items()}

    similarity = staticmethod(similarity)
