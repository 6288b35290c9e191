"""Cross-request dynamic batching: one worker thread per model feeds the engine merged batches.

Requests run the ordinary Python API (``Embedder.encode`` / ``encode_contextual``) on a *view* of
the model whose engine is a :class:`QueuedEngine`: instead of running the model itself, it queues
its token sequences for the model's worker. The worker takes everything queued (up to a token cap),
runs it through the real :class:`~pplx_embed.engine.engine.Engine` in one call — which packs the
merged sequences into token-budget batches — and hands each request its own vectors back. So the
server and the Python API share one code path (tokenization, limits, late chunking, quantization).

Admission is bounded: at most ``max_queue`` requests per model are waiting or running; beyond that
:class:`QueueFull` (HTTP 429) is raised instead of letting memory grow. A request that timed out or
whose client went away is cancelled; its sequences are dropped if they have not started running.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

import numpy as np

from pplx_embed.engine.batching import Sequence
from pplx_embed.engine.engine import Engine


class QueueFull(RuntimeError):
    """The model already has ``max_queue`` requests waiting or running."""


class ShuttingDown(RuntimeError):
    """The server is stopping and takes no new work."""


@dataclass
class _Job:
    sequences: list[Sequence]
    tokens: int
    future: Future = field(default_factory=Future)


class Ticket:
    """One request's handle on its queued work: cancelling it frees work not yet started."""

    def __init__(self) -> None:
        self._futures: list[Future] = []
        self._lock = threading.Lock()
        self.cancelled = False
        self.tokens = 0  # tokens this request sent to the engine

    def add(self, future: Future) -> None:
        with self._lock:
            if self.cancelled:
                future.cancel()
            self._futures.append(future)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for future in self._futures:
                future.cancel()


class QueuedEngine:
    """Stands in for an Embedder's engine: sends the sequences through the model's batcher."""

    def __init__(self, batcher: Batcher, ticket: Ticket):
        self.batcher = batcher
        self.ticket = ticket
        self.dimension = batcher.engine.dimension

    def run(self, sequences: list[Sequence], max_batch_size: int | None = None,
            show_progress_bar: bool = False, desc: str = "embedding") -> list[np.ndarray]:
        if self.ticket.cancelled:
            raise CancelledError()
        future = self.batcher.submit(sequences)
        self.ticket.add(future)
        self.ticket.tokens += sum(len(s.ids) for s in sequences)
        return future.result()


BatchObserver = Callable[[int, int, float], None]  # (requests, tokens, seconds) of one engine call


class Batcher:
    """A model's request queue and the worker thread that drains it into the engine."""

    def __init__(self, embedder, max_queue: int = 128, merge_tokens: int | None = None,
                 observer: BatchObserver | None = None):
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.embedder = embedder
        self.engine: Engine = embedder.engine
        self.max_queue = max_queue
        self.merge_tokens = merge_tokens or self.engine.max_batch_tokens
        self.observer = observer
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._admitted = 0
        self._waiting = 0
        self._running = 0
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=f"batcher-{embedder.name}", daemon=True)
        self._worker.start()

    # ---- admission -------------------------------------------------------------------------
    def admit(self) -> None:
        """Reserve a place for one request or raise :class:`QueueFull` / :class:`ShuttingDown`."""
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if self._admitted >= self.max_queue:
                raise QueueFull(f"model {self.embedder.name!r} has {self._admitted} requests in flight "
                                f"(limit {self.max_queue}); retry shortly")
            self._admitted += 1

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    @property
    def in_flight(self) -> int:
        """Admitted requests (waiting or running)."""
        return self._admitted

    @property
    def depth(self) -> int:
        """Jobs queued and not yet taken by the worker."""
        return self._waiting

    @property
    def running(self) -> int:
        """Jobs in the engine call now running."""
        return self._running

    def view(self, ticket: Ticket):
        """The model as an Embedder whose engine queues into this batcher on behalf of ``ticket``."""
        embedder = copy.copy(self.embedder)
        embedder.engine = QueuedEngine(self, ticket)
        return embedder

    # ---- queue -----------------------------------------------------------------------------
    def submit(self, sequences: list[Sequence]) -> Future:
        """Queue sequences for the worker; the future resolves to one array per sequence."""
        job = _Job(sequences, sum(len(s.ids) for s in sequences))
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            self._waiting += 1
        self._queue.put(job)
        return job.future

    def _take(self, block: bool) -> _Job | None:
        job = self._queue.get(block=block)
        if job is not None:
            with self._lock:
                self._waiting -= 1
        return job

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._take(block=True)
            if first is None:
                return
            jobs, tokens = [first], first.tokens
            while tokens < self.merge_tokens:
                try:
                    job = self._take(block=False)
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                tokens += job.tokens
            self._run([job for job in jobs if job.future.set_running_or_notify_cancel()])

    def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        sequences = [s for job in jobs for s in job.sequences]
        start = time.perf_counter()
        self._running = len(jobs)
        try:
            pooled = self.engine.run(sequences)
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            self._running = 0
        if self.observer is not None:
            self.observer(len(jobs), sum(job.tokens for job in jobs), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            job.future.set_result(pooled[offset : offset + len(job.sequences)])
            offset += len(job.sequences)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is queued, and stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)
