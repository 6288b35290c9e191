"""The Python API: ``Embedder(model).encode(texts)`` and ``encode_contextual(docs)``.

Data flows one way: text → token ids (here) → engine batches → backend forward + pooling →
Matryoshka truncation → quantization (``model.quantization``).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
import torch

from pplx_embed.engine.engine import Engine
from pplx_embed.errors import InputError
from pplx_embed.model.checkpoint import Checkpoint, load_checkpoint
from pplx_embed.model.late_chunking import join_chunks, macro_windows
from pplx_embed.model.pooling import Sequence
from pplx_embed.model.quantization import check_dimensions, check_quantization, quantize, similarity
from pplx_embed.options import EmbedderOptions

log = logging.getLogger(__name__)
Truncation = Literal["right", "left"] | None
# A text longer than this many characters per context token is refused (or cut, when truncating) before it is
# tokenized: real text averages 3-6 characters per token, and tokenizing megabytes to refuse them costs gigabytes.
CHARS_PER_TOKEN = 16


def _check_texts(texts: object, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what}[{i}] must be a string, got {type(text).__name__}")
    return list(texts)


class Embedder:
    """An embedding model ready to encode: checkpoint, tokenizer and engine.

    ``model`` is an alias (``pplx-embed-v1-0.6b``, ``pplx-embed-context-v1-4b``, ``minilm`` …), a
    checkpoint directory or a hub id; ``None`` picks the default (``PPLX_EMBED_MODEL``, else
    pplx-embed-v1-0.6b when cached, else the bundled all-MiniLM-L6-v2). The keyword arguments are
    those of :class:`~pplx_embed.options.EmbedderOptions` (unset ones come from ``PPLX_EMBED_*``
    variables, then defaults); pass ``options=`` to give them all at once.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | None = None,
                 dtype: str | None = None, backend: str | None = None, max_batch_tokens: int | None = None,
                 max_batch_size: int | None = None, adapter: str | os.PathLike | None = None,
                 options: EmbedderOptions | None = None):
        if options is None:
            options = EmbedderOptions.from_env(model=None if model is None else str(model), device=device,
                                               dtype=dtype, backend=backend, max_batch_tokens=max_batch_tokens,
                                               max_batch_size=max_batch_size,
                                               adapter=None if adapter is None else str(adapter))
        self.options = options
        from transformers import AutoTokenizer

        from pplx_embed.engine.auto import fits_in_memory
        from pplx_embed.engine.backends import LONG_INPUT_TOKENS, create_backend, native_bf16, resolve_backend
        from pplx_embed.engine.threads import cpu_flags
        from pplx_embed.engine.torch_backend import pick_device, pick_dtype
        from pplx_embed.model.encoder import load_transformer

        self.device = pick_device(options.device)
        self.checkpoint: Checkpoint = load_checkpoint(options.model)
        #: the auto decision (candidates measured, cache file), or None when the backend was explicit
        self.auto: dict | None = None
        probing = options.backend == "auto" and options.dtype is None and self.device == "cpu" and not options.adapter
        if probing and (reason := fits_in_memory(self.checkpoint.path, self.checkpoint.config)):
            probing, fallback = False, "bfloat16" if native_bf16(cpu_flags()) else "float32"
            self.auto = {"backend": "torch", "dtype": fallback, "candidates": [], "skipped": reason}
            log.warning("auto: no probe for %s: %s; running torch %s", options.model, reason, fallback)
        dtype = self.auto["dtype"] if self.auto else options.dtype
        self.dtype = torch.float32 if probing else pick_dtype(dtype, self.device)
        backend = "auto" if probing else "torch" if options.adapter else resolve_backend(options.backend, self.device,
                                                                                          self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint.path, trust_remote_code=False)
        self._prefix, self._suffix = self._special_tokens()
        load_dtype = self.dtype if backend == "torch" else torch.float32  # exports convert the fp32 model
        self.model = load_transformer(self.checkpoint.path, self.checkpoint.config, load_dtype, self.device) \
            if not options.adapter else self._adapter_model(load_dtype)
        #: inputs longer than this many tokens run on torch (auto chose OpenVINO for a long-context model)
        self.long_inputs: int | None = None
        throughput: bool | None = None  # OpenVINO streams: its default layout, or what auto measured
        if probing:
            self.auto = self._choose_backend()
            backend, self.dtype = self.auto["backend"], getattr(torch, self.auto["dtype"])
            throughput = bool(self.auto.get("throughput"))
            if backend == "torch" and self.dtype != torch.float32:
                self.model.to(self.dtype)
        self.backend = backend
        calibration = self._probe_ids() if backend.endswith("-int8") else None
        main = create_backend(backend, self.dtype, self.model, self.device, self.checkpoint.path,
                              self.checkpoint.pooling, self.name, calibration, throughput)
        long_backend = None
        if self.auto is not None and backend == "openvino" and self.max_length > LONG_INPUT_TOKENS:
            self.long_inputs = LONG_INPUT_TOKENS
            long_backend = create_backend("torch", self.dtype, self.model.to(self.dtype), self.device,
                                          self.checkpoint.path, self.checkpoint.pooling, self.name)
        elif backend != "torch":
            self.model.to("meta")  # the converted model holds the weights: free the float32 copy
        self.engine = self._engine(main, long_backend)

    def _adapter_model(self, dtype: torch.dtype) -> torch.nn.Module:
        """The base with ``options.adapter`` active, the base weights shared with other adapters of it."""
        from pplx_embed.model.adapter import adapter_view
        from pplx_embed.model.encoder import load_transformer

        ckpt = self.checkpoint
        return adapter_view(self.options.adapter, (str(ckpt.path), str(dtype), self.device),
                            lambda: load_transformer(ckpt.path, ckpt.config, dtype, self.device))

    def _engine(self, backend, long_backend=None) -> Engine:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return Engine(backend, self.dimension, pad_id, self.checkpoint.pooling, self.options.max_batch_tokens,
                      self.options.max_batch_size, long_backend, self.long_inputs)

    def _probe_ids(self) -> list[list[int]]:
        from pplx_embed.engine.auto import probe_texts

        return self.tokenize(probe_texts(), truncation="right")

    def _choose_backend(self) -> dict:
        """``backend="auto"`` on CPU: the cached or freshly measured fastest accurate configuration."""
        from pplx_embed.engine.auto import choose

        def run(backend, ids: list[list[int]]) -> np.ndarray:
            return np.concatenate(self._engine(backend).run([Sequence(x) for x in ids]))

        def load(dtype: torch.dtype) -> torch.nn.Module:
            from pplx_embed.model.encoder import load_transformer

            return load_transformer(self.checkpoint.path, self.checkpoint.config, dtype, "cpu")

        return choose(self.model, self.checkpoint.path, self.name, self.checkpoint.pooling, self._probe_ids(), run,
                      load)

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
        return self.max_length * CHARS_PER_TOKEN

    @property
    def sep_token_id(self) -> int:
        sep = self.tokenizer.sep_token_id
        return sep if sep is not None else self.tokenizer.eos_token_id

    @property
    def special_tokens(self) -> tuple[list[int], list[int]]:
        """Ids the tokenizer puts before / after every text (``[CLS]``/``[SEP]`` for BERT, none for Qwen)."""
        return self._prefix, self._suffix

    def info(self) -> dict:
        """Dimensions, context, parameter count, dtype and pooling of the loaded model."""
        return {
            "model": self.name, "path": str(self.checkpoint.path), "dimension": self.dimension,
            "max_length": self.max_length, "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).removeprefix("torch."), "device": self.device, "backend": self.backend,
            "pooling": self.checkpoint.pooling, "normalize": self.checkpoint.normalize,
            "architecture": self.checkpoint.config.get("model_type"),
            "bidirectional": self.checkpoint.is_pplx or None,
            "engine": self.engine_info(),
        }

    def engine_info(self) -> dict:
        """How vectors are computed: backend, compute dtype, and whether ``auto`` chose them (with its figures).

        Every output's metadata records this, so vectors computed differently can be told apart.
        """
        out = {"backend": self.backend, "dtype": str(self.dtype).removeprefix("torch."),
               "requested": self.options.backend}
        if getattr(self.engine.backend, "streams", 1) > 1:
            out["streams"] = self.engine.backend.streams
        if self.long_inputs is not None:
            out["long_inputs"] = {"backend": "torch", "over_tokens": self.long_inputs}
        if self.auto is not None:
            out["auto"] = {k: self.auto[k] for k in ("throughput", "skipped", "candidates", "probe", "probe_s", "guard",
                                                     "decided", "cached", "cache_file") if k in self.auto}
        return out

    # ---- tokens ------------------------------------------------------------------------------
    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (``[CLS]``/``[SEP]`` for BERT, none for Qwen)."""
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    def _body_ids(self, texts: list[str], truncation: Truncation = None, cap: bool = True) -> list[list[int]]:
        """Token ids of each text without special tokens; with ``cap``, a text over :attr:`max_chars` is cut
        (when truncating) or refused before the tokenizer sees it."""
        if not texts:
            return []
        if cap:
            texts = [self._fit(t, self.max_chars, truncation, f"text {i}", "characters") for i, t in enumerate(texts)]
        return [e.ids for e in self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _fit(self, items: list[int] | str, room: int, truncation: Truncation, where: str, unit: str = "tokens"):
        """``items`` (token ids, or a text's characters) cut to ``room`` as ``truncation`` says, else InputError."""
        truncation = truncation or self.options.truncation
        if len(items) <= room:
            return items
        if truncation == "right":
            return items[:room]
        if truncation == "left":
            return items[len(items) - room :]
        raise InputError(
            f"{where} has {len(items)} {unit}, more than the model's limit of {room}; "
            "shorten it or pass truncation='right' (or 'left')"
        )

    def tokenize(self, texts: str | list[str], truncation: Truncation = None) -> list[list[int]]:
        """Model input ids for each text (special tokens included), checked against the context."""
        texts = _check_texts(texts)
        if truncation not in (None, "right", "left"):
            raise InputError(f"truncation must be None, 'right' or 'left', got {truncation!r}")
        room = self.max_length - len(self._prefix) - len(self._suffix)
        return [
            self._prefix + self._fit(ids, room, truncation, f"text {i}") + self._suffix
            for i, ids in enumerate(self._body_ids(texts, truncation))
        ]

    def count_tokens(self, texts: str | list[str]) -> list[int]:
        """Tokens each text costs as a model input (before any truncation)."""
        extra = len(self._prefix) + len(self._suffix)
        return [len(ids) + extra for ids in self._body_ids(_check_texts(texts), cap=False)]

    # ---- embeddings --------------------------------------------------------------------------
    def finish(self, pooled: np.ndarray, quantization: str, dimensions: int | None) -> np.ndarray:
        """Pooled vectors → the output precision of :meth:`encode` (normalize, Matryoshka cut, quantize)."""
        if quantization == "float" and self.checkpoint.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return quantize(pooled, quantization, None if dimensions == self.dimension else dimensions)

    def encode(self, texts: str | list[str], quantization: str = "float", dimensions: int | None = None,
               batch_size: int | None = None, show_progress_bar: bool = False,
               truncation: Truncation = None) -> np.ndarray:
        """Embed texts → ``[n, dim]`` float32, int8, packed binary uint8 (``[n, dim/8]``) or ±1 int8.

        ``dimensions`` keeps the first d coordinates (Matryoshka) before quantizing. ``batch_size``
        caps sequences per batch; batches are also bounded by the engine's token budget. A single
        string returns a single vector.
        """
        single = isinstance(texts, str)
        check_quantization(quantization)
        dimensions = check_dimensions(dimensions, self.dimension)
        out = self.finish(self.pooled(texts, batch_size, show_progress_bar, truncation), quantization, dimensions)
        return out[0] if single else out

    def pooled(self, texts: str | list[str], batch_size: int | None = None, show_progress_bar: bool = False,
               truncation: Truncation = None) -> np.ndarray:
        """The raw pooled vectors ``[n, dim]`` float32 that every precision of :meth:`encode` derives from.

        ``quantize(pooled, q, d)`` equals ``encode(texts, q, d)`` for int8 and binary; ``float`` output
        is this, L2-normalized when the model's pipeline normalizes (sentence-transformers ``Normalize``).
        """
        pooled = self.engine.run(self.prepare(texts, truncation), batch_size, show_progress_bar)
        return np.concatenate(pooled) if pooled else np.zeros((0, self.dimension), np.float32)

    def prepare(self, texts: str | list[str], truncation: Truncation = None) -> list[Sequence]:
        """The engine inputs of :meth:`encode`: one checked, tokenized :class:`Sequence` per text.

        ``engine.run(prepare(texts))`` (or any scheduler of the same sequences) then :meth:`finish`
        gives exactly what :meth:`encode` returns.
        """
        texts = _check_texts(texts)
        for i, text in enumerate(texts):
            if not text.strip():
                raise InputError(f"texts[{i}] is empty; every text needs some content")
        return [Sequence(ids) for ids in self.tokenize(texts, truncation)]

    def encode_contextual(self, documents: list[list[str]], quantization: str = "float",
                          dimensions: int | None = None, batch_size: int | None = None,
                          show_progress_bar: bool = False, truncation: Truncation = None) -> list[np.ndarray]:
        """Late chunking: one array ``[n_chunks, dim]`` per document, chunks in order.

        Each document's chunks are joined with the separator token and embedded in one forward pass
        (macro-windows beyond the context window, see ``model.late_chunking``); each chunk's vector
        is the mean of its own tokens' states. An empty chunk gives a zero vector.
        """
        check_quantization(quantization)
        dimensions = check_dimensions(dimensions, self.dimension)
        sequences, owners = self.prepare_contextual(documents, truncation)
        pooled = self.engine.run(sequences, batch_size, show_progress_bar, desc="documents")
        return self.finish_contextual(pooled, owners, len(documents), quantization, dimensions)

    def prepare_contextual(self, documents: list[list[str]],
                           truncation: Truncation = None) -> tuple[list[Sequence], list[int]]:
        """The engine inputs of :meth:`encode_contextual`: the sequences and the document each belongs to."""
        if not isinstance(documents, (list, tuple)):
            raise InputError("documents must be a list of documents, each a list of chunk strings")
        chunk_ids: list[list[list[int]]] = []
        room = self.max_length - len(self._prefix) - len(self._suffix)
        for d, doc in enumerate(documents):
            chunks = _check_texts(doc, f"documents[{d}]") if not isinstance(doc, str) else None
            if not chunks:
                raise InputError(f"documents[{d}] must be a non-empty list of chunk strings")
            chunk_ids.append([self._fit(ids, room, truncation, f"documents[{d}] chunk {k}")
                              for k, ids in enumerate(self._body_ids(chunks, truncation))])
        sequences, owners = [], []
        for d, chunks in enumerate(chunk_ids):
            for core, window in macro_windows([len(c) for c in chunks], room):
                seq = join_chunks([chunks[k] for k in window], self.sep_token_id, self._prefix, self._suffix)
                offset = core.start - window.start
                seq.spans = seq.spans[offset : offset + len(core)]
                sequences.append(seq)
                owners.append(d)
        return sequences, owners

    def finish_contextual(self, pooled: list[np.ndarray], owners: list[int], documents: int, quantization: str,
                          dimensions: int | None) -> list[np.ndarray]:
        """The pooled chunk vectors of :meth:`prepare_contextual`'s sequences → one array per document."""
        out: list[list[np.ndarray]] = [[] for _ in range(documents)]
        for d, vectors in zip(owners, pooled):
            out[d].append(vectors)
        return [self.finish(np.concatenate(parts), quantization, dimensions) for parts in out]

    similarity = staticmethod(similarity)
