"""The engine: one code path from token sequences to pooled vectors, for API, CLI and server."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from pplx_embed.engine.batching import plan_batches
from pplx_embed.model.pooling import Sequence, Span
from pplx_embed.options import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS


class Backend(Protocol):
    name: str

    def pool(self, input_ids: np.ndarray, attention_mask: np.ndarray, spans: list[list[Span]], mode: str) -> np.ndarray:
        """Pooled float32 vectors ``[total spans, dim]`` for one right-padded batch."""


class Engine:
    """Packs sequences into token-budget batches, runs a backend, returns vectors in input order.

    With ``long_backend``, batches wider than ``long_tokens`` run on it instead (the backend that
    is fastest on short texts need not be on very long ones).
    """

    def __init__(self, backend: Backend, dimension: int, pad_id: int, pooling: str = "mean",
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 long_backend: Backend | None = None, long_tokens: int | None = None):
        self.backend = backend
        self.long_backend = long_backend
        self.long_tokens = long_tokens
        self.dimension = dimension
        self.pad_id = pad_id
        self.pooling = pooling
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size

    def run(self, sequences: list[Sequence], max_batch_size: int | None = None,
            show_progress_bar: bool = False, desc: str = "embedding") -> list[np.ndarray]:
        """One ``[len(spans), dim]`` float32 array per sequence, in the order given.

        A sequence without tokens (a document of empty chunks) pools to zero vectors unrun.
        """
        lengths = [len(s.ids) for s in sequences]
        results = [np.zeros((len(s.spans), self.dimension), np.float32) for s in sequences]
        todo = [i for i, n in enumerate(lengths) if n > 0]
        plan = plan_batches([lengths[i] for i in todo], self.max_batch_tokens, max_batch_size or self.max_batch_size)
        batches = [[todo[j] for j in batch] for batch in plan]
        with tqdm(total=len(todo), desc=desc, unit="seq", disable=not show_progress_bar) as bar:
            for batch in batches:
                width = max(max(lengths[i] for i in batch), 1)
                ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, i in enumerate(batch):
                    ids[row, : lengths[i]] = sequences[i].ids
                    mask[row, : lengths[i]] = 1
                runner = self.long_backend if self.long_backend and width > self.long_tokens else self.backend
                pooled = runner.pool(ids, mask, [sequences[i].spans for i in batch], self.pooling)
                offset = 0
                for i in batch:
                    count = len(sequences[i].spans)
                    results[i] = pooled[offset : offset + count]
                    offset += count
                bar.update(len(batch))
        return results
