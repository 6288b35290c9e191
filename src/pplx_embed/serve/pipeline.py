"""One served model's request path: check → tokenize once (off the loop) → fair scheduler → outputs (off the loop).

The Python API's own pieces do the work, so the server answers byte for byte what ``Embedder.encode_all``
/ ``encode_contextual_all`` return: ``Embedder.prepare`` / ``prepare_contextual`` make the sequences,
the :class:`~pplx_embed.serve.scheduler.Scheduler` pools them on the model's worker thread between
other requests' sequences, and ``Embedder.outputs`` / ``contextual_outputs`` give the output precisions.

The input rules are the package's own (``pplx_embed.checks``, one message everywhere); what this module adds
are the server's capacity limits (inputs, characters and tokens per request: 413).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pplx_embed.checks.texts import Documents, Texts, check_documents, check_texts
from pplx_embed.embedder import check_outputs
from pplx_embed.serve.errors import APIError
from pplx_embed.serve.limits import CPU_STEP_SECONDS, ServeLimits
from pplx_embed.serve.scheduler import Scheduler, StepObserver, Timing


def _too_large(message: str, code: str) -> APIError:
    return APIError(413, message, "invalid_request_error", code)


def check_texts_within(texts: Any, embedder, limits: ServeLimits, truncate: bool = False) -> Texts:
    """A request's texts, checked (``pplx_embed.checks``) and within the count and character limits (413)."""
    texts = check_texts(texts, required=True)
    if len(texts) > limits.max_client_batch_size:
        raise _too_large(f"input has {len(texts)} texts, more than the limit of {limits.max_client_batch_size} "
                         "per request", "too_many_inputs")
    if not truncate:
        for i, text in enumerate(texts):
            if len(text) > embedder.max_chars:
                raise _too_large(f"text {i} has {len(text)} characters, more than model {embedder.name!r} reads "
                                 f"({embedder.max_chars} for its {embedder.max_length} tokens); shorten it or "
                                 "truncate", "too_many_tokens")
    _check_characters(sum(min(len(t), embedder.max_chars) for t in texts), limits, embedder)
    return texts


def check_documents_within(documents: Any, embedder, limits: ServeLimits) -> Documents:
    """A contextual request's documents, checked and within the document, chunk and character limits (413)."""
    documents = check_documents(documents, required=True)
    if len(documents) > limits.max_client_batch_size:
        raise _too_large(f"input has {len(documents)} documents, more than the limit of "
                         f"{limits.max_client_batch_size}", "too_many_inputs")
    chunks = sum(len(doc) for doc in documents)
    if chunks > limits.max_chunks:
        raise _too_large(f"input has {chunks} chunks in total, more than the limit of {limits.max_chunks}",
                         "too_many_inputs")
    chars_per_token = embedder.max_chars // embedder.max_length
    for d, doc in enumerate(documents):
        if sum(len(chunk) for chunk in doc) > limits.max_tokens_per_document * chars_per_token:
            raise _too_large(f"document {d} has more characters than {limits.max_tokens_per_document} tokens can "
                             "hold", "too_many_tokens")
    _check_characters(sum(len(chunk) for doc in documents for chunk in doc), limits, embedder)
    return documents


def _check_characters(total: int, limits: ServeLimits, embedder) -> None:
    chars_per_token = embedder.max_chars // embedder.max_length
    if total > limits.max_tokens_per_request * chars_per_token:
        raise _too_large(f"input has {total} characters, more than {limits.max_tokens_per_request} tokens "
                         "per request can hold", "too_many_tokens")


def check_tokens(counts: list[int], limits: ServeLimits, per_input: int | None = None, what: str = "tokens") -> None:
    """Token totals after tokenizing: per input (documents) and per request (413)."""
    if per_input is not None:
        for i, n in enumerate(counts):
            if n > per_input:
                raise _too_large(f"document {i} has {n} tokens, more than the limit of {per_input} {what}",
                                 "too_many_tokens")
    if sum(counts) > limits.max_tokens_per_request:
        raise _too_large(f"input has {sum(counts)} tokens in total, more than the limit of "
                         f"{limits.max_tokens_per_request} tokens per request", "too_many_tokens")


@dataclass
class Result:
    """What a request computed (``vectors``, and the ``body`` its ``finish`` made of them), and its timing."""

    vectors: Any  # np.ndarray, or one per document
    body: Any
    timing: Timing
    tokenization: float

    def headers(self) -> dict[str, str]:
        """TEI's per-request timing headers (milliseconds) and the tokens computed."""
        ms = {"x-tokenization-time": self.tokenization, "x-queue-time": self.timing.queue,
              "x-inference-time": self.timing.inference}
        return {**{k: str(round(v * 1000, 2)) for k, v in ms.items()}, "x-compute-tokens": str(self.timing.tokens)}


class Pipeline:
    """Embeds requests for one model; ``prep`` runs tokenizing and finishing, never the event loop."""

    def __init__(self, name: str, embedder, limits: ServeLimits, prep: Executor, observer: StepObserver | None = None):
        self.embedder, self.limits, self.prep = embedder, limits, prep
        engine = embedder.engine
        cpu = str(embedder.device) == "cpu"
        self.scheduler = Scheduler(name, engine, limits.max_step_tokens or engine.max_batch_tokens,
                                   limits.max_batch_requests or engine.max_batch_size,
                                   limits.max_concurrent_requests, limits.max_queue_tokens, observer,
                                   limits.step_seconds or (CPU_STEP_SECONDS if cpu else None))

    async def _off_loop(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.prep, fn, *args)

    async def embed(self, texts: Any, precisions: Iterable[str], dimensions: int | None,
                    truncation: str | None = None, finish: Callable[[dict, int], Any] | None = None) -> Result:
        """``{precision: vectors}`` of ``texts`` as ``Embedder.encode_all`` returns them; ``finish(vectors, tokens)``
        makes the answer's body off the loop."""
        precisions, dimensions = check_outputs(precisions, dimensions, self.embedder.dimension)
        texts = check_texts_within(texts, self.embedder, self.limits, truncate=truncation is not None)
        start = time.perf_counter()
        sequences = await self._off_loop(self.embedder.prepare, texts, truncation)
        tokenization = time.perf_counter() - start
        check_tokens([len(s.ids) for s in sequences], self.limits)
        pooled, timing = await self.scheduler.run(sequences)

        def done() -> Result:
            vectors = self.embedder.outputs(np.concatenate(pooled), precisions, dimensions)
            return Result(vectors, finish(vectors, timing.tokens) if finish else None, timing, tokenization)

        return await self._off_loop(done)

    async def embed_contextual(self, documents: Any, precisions: Iterable[str], dimensions: int | None,
                               truncation: str | None = None,
                               finish: Callable[[dict, int], Any] | None = None) -> Result:
        """``{precision: one array per document}`` as ``Embedder.encode_contextual_all`` returns it."""
        precisions, dimensions = check_outputs(precisions, dimensions, self.embedder.dimension)
        documents = check_documents_within(documents, self.embedder, self.limits)
        start = time.perf_counter()
        sequences, owners = await self._off_loop(self.embedder.prepare_contextual, documents, truncation)
        tokenization = time.perf_counter() - start
        per_document = [0] * len(documents)
        for seq, d in zip(sequences, owners):
            per_document[d] += len(seq.ids)
        check_tokens(per_document, self.limits, self.limits.max_tokens_per_document, "tokens per document")
        pooled, timing = await self.scheduler.run(sequences)

        def done() -> Result:
            arrays = self.embedder.contextual_outputs(pooled, owners, len(documents), precisions, dimensions)
            return Result(arrays, finish(arrays, timing.tokens) if finish else None, timing, tokenization)

        return await self._off_loop(done)


class LoopEmbedder:
    """The model as an :class:`~pplx_embed.embedder.EmbedderLike` for blocking callers (an
    :class:`~pplx_embed.index.Index` in a thread): calls go through the pipeline on the server's event loop.

    Each call waits at most ``timeout`` seconds; the caller's thread never runs the model itself.
    """

    def __init__(self, pipeline: Pipeline, loop: asyncio.AbstractEventLoop, timeout: float):
        self._pipeline, self._loop, self._timeout = pipeline, loop, timeout
        embedder = pipeline.embedder
        self.name, self.dimension, self.max_length = embedder.name, embedder.dimension, embedder.max_length

    def _wait(self, coroutine) -> Result:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            result = future.result(self._timeout)
        except TimeoutError:
            future.cancel()  # drops the queued work
            raise
        return result

    def encode_all(self, texts: Any, precisions: Iterable[str], dimensions: int | None = None, *,
                   truncation: str | None = None, **_: Any) -> dict[str, np.ndarray]:
        return self._wait(self._pipeline.embed(texts, precisions, dimensions, truncation)).vectors

    def encode_contextual_all(self, documents: Any, precisions: Iterable[str], dimensions: int | None = None, *,
                              truncation: str | None = None, **_: Any) -> dict[str, list[np.ndarray]]:
        return self._wait(self._pipeline.embed_contextual(documents, precisions, dimensions, truncation)).vectors
