"""Cross-request batching on the event loop: one scheduler per served model, shaped like TEI's.

Requests arrive as prepared :class:`~pplx_embed.model.pooling.Sequence` s (tokenized once, off the
loop) and wait in an asyncio queue; no thread is parked per request. Each *step* takes the waiting
requests in turn, one sequence at a time (round-robin), until it holds its token budget or
``max_batch_requests`` sequences, and runs it on the model's one worker thread (``Engine.run`` packs the
step into padded batches and calls ``backend.pool``). Requests served in a step go to the back of the
line, so a big request is split into steps interleaved with every other request and a small request
waits about one step, whatever else is queued. The token budget is ``max_step_tokens``; with
``step_seconds`` it follows the measured tokens/s so that a step takes about that long (on CPU a
16K-token step takes seconds; a quarter-second step costs no throughput).

Admission is bounded twice: ``max_concurrent_requests`` requests per model (waiting, tokenizing or
running) and ``max_queue_tokens`` tokens waiting; beyond either :class:`Overloaded` (HTTP 429). A
cancelled request (timeout, client gone, the end of a graceful shutdown) leaves the queue at once: its
sequences not yet run are never computed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from pplx_embed.engine.engine import Engine
from pplx_embed.model.pooling import Sequence

log = logging.getLogger("pplx_embed.serve")

StepObserver = Callable[[int, int, float], None]  # (requests, tokens, seconds) of one step
MIN_STEP_TOKENS = 256  # a step-time target never shrinks steps below this (a longer sequence runs alone anyway)


class Overloaded(RuntimeError):
    """The model already holds as many requests or queued tokens as it may (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The server is stopping and takes no new work (HTTP 503)."""


@dataclass
class Timing:
    """Where one request's time went (seconds) and the tokens it computed."""

    queue: float = 0.0  # arrival → its first step started
    inference: float = 0.0  # the steps that ran its sequences
    tokens: int = 0


class _Job:
    """One request's sequences, how far they are scheduled, and their results."""

    def __init__(self, sequences: list[Sequence], future: asyncio.Future):
        self.sequences, self.future = sequences, future
        self.results: list[np.ndarray | None] = [None] * len(sequences)
        self.next = 0  # first sequence not yet in a step
        self.left = len(sequences)  # sequences not yet computed
        self.tokens = sum(len(s.ids) for s in sequences)
        self.arrived = time.perf_counter()
        self.timing = Timing(tokens=self.tokens)
        self.started = False

    def unscheduled_tokens(self) -> int:
        return sum(len(s.ids) for s in self.sequences[self.next :])


class Scheduler:
    """A model's queue of prepared requests and the loop that feeds its worker thread fair steps."""

    def __init__(self, name: str, engine: Engine, max_step_tokens: int, max_batch_requests: int,
                 max_concurrent_requests: int, max_queue_tokens: int, observer: StepObserver | None = None,
                 step_seconds: float | None = None):
        for what, value in (("max_step_tokens", max_step_tokens), ("max_batch_requests", max_batch_requests),
                            ("max_concurrent_requests", max_concurrent_requests),
                            ("max_queue_tokens", max_queue_tokens)):
            if value < 1:
                raise ValueError(f"{what} must be at least 1")
        self.name, self.engine, self.observer = name, engine, observer
        self.max_step_tokens, self.max_batch_requests = max_step_tokens, max_batch_requests
        self.max_concurrent_requests, self.max_queue_tokens = max_concurrent_requests, max_queue_tokens
        # with a step-time target, the step budget follows the measured tokens/s (capped by max_step_tokens)
        self.step_seconds, self._rate = step_seconds, None
        self.step_tokens = max_step_tokens if step_seconds is None else min(max_step_tokens, 4 * MIN_STEP_TOKENS)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"pplx-model-{name}")
        self._jobs: list[_Job] = []  # waiting, in turn order
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._admitted = 0
        self._queued_tokens = 0
        self._running = 0
        self._closed = False

    # ---- admission -------------------------------------------------------------------------
    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_concurrent_requests`` places for the block (else :class:`Overloaded`)."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        if self._admitted >= self.max_concurrent_requests:
            raise Overloaded(f"model {self.name!r} has {self._admitted} requests in flight "
                             f"(limit {self.max_concurrent_requests}); retry shortly")
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @property
    def in_flight(self) -> int:
        """Admitted requests (tokenizing, waiting or running)."""
        return self._admitted

    @property
    def depth(self) -> int:
        """Requests waiting with sequences not yet in a step."""
        return len(self._jobs)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def running(self) -> int:
        """Requests in the step now running."""
        return self._running

    # ---- requests --------------------------------------------------------------------------
    async def run(self, sequences: list[Sequence]) -> tuple[list[np.ndarray], Timing]:
        """One pooled array per sequence (in order) and the request's timing; cancelling drops its work."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        if not sequences:
            return [], Timing()
        job = _Job(sequences, asyncio.get_running_loop().create_future())
        if self._queued_tokens and self._queued_tokens + job.tokens > self.max_queue_tokens:
            raise Overloaded(f"model {self.name!r} has {self._queued_tokens} tokens queued (limit "
                             f"{self.max_queue_tokens}); retry shortly")
        self._jobs.append(job)
        self._queued_tokens += job.tokens
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler-{self.name}")
        self._wake.set()
        try:
            await job.future
        finally:
            if not job.future.done() or job.future.cancelled():
                self._drop(job)
        return job.results, job.timing

    def _drop(self, job: _Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            self._queued_tokens -= job.unscheduled_tokens()

    # ---- steps -----------------------------------------------------------------------------
    def _pick(self) -> list[tuple[_Job, int]]:
        """The next step: waiting requests in turn, one sequence each per round, within the budgets."""
        step: list[tuple[_Job, int]] = []
        tokens, candidates, served = 0, list(self._jobs), []
        while candidates and len(step) < self.max_batch_requests:
            again = []
            for job in candidates:
                if len(step) >= self.max_batch_requests:
                    break
                n = len(job.sequences[job.next].ids)
                if step and tokens + n > self.step_tokens:
                    continue  # its next sequence waits for the next step
                step.append((job, job.next))
                tokens += n
                job.next += 1
                if job not in served:
                    served.append(job)
                if job.next < len(job.sequences):
                    again.append(job)
            candidates = again
        self._queued_tokens -= tokens
        # requests served go to the back of the line; those that got nothing go first next time
        waiting = [job for job in self._jobs if job not in served]
        self._jobs = waiting + [job for job in served if job.next < len(job.sequences)]
        return step

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._closed and not self._jobs):
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            step = self._pick()
            jobs = list(dict.fromkeys(job for job, _ in step))
            start = time.perf_counter()
            for job in jobs:
                if not job.started:
                    job.started, job.timing.queue = True, start - job.arrived
            self._running = len(jobs)
            try:
                pooled = await loop.run_in_executor(self._worker, self.engine.run,
                                                    [job.sequences[i] for job, i in step])
            except Exception as exc:  # noqa: BLE001 - every request of the step gets the error
                for job in jobs:
                    self._drop(job)
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._running = 0
            seconds = time.perf_counter() - start
            tokens = sum(len(job.sequences[i].ids) for job, i in step)
            self._adapt(tokens, seconds)
            if self.observer is not None:
                self.observer(len(jobs), tokens, seconds)
            for (job, i), vectors in zip(step, pooled):
                job.results[i] = vectors
                job.left -= 1
            for job in jobs:
                job.timing.inference += seconds
                if job.left == 0 and not job.future.done():
                    job.future.set_result(None)

    def _adapt(self, tokens: int, seconds: float) -> None:
        """Size steps to take about ``step_seconds`` at the measured rate (from steps at least half full)."""
        if self.step_seconds is None or seconds <= 0 or tokens < self.step_tokens // 2:
            return
        rate = tokens / seconds
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
        self.step_tokens = max(MIN_STEP_TOKENS, min(self.max_step_tokens, int(self._rate * self.step_seconds)))

    async def close(self) -> None:
        """Take no new work, drop what is queued (its waiters get :class:`ShuttingDown`), let the step running
        now finish, and stop the worker. The server calls it once the graceful wait for requests is over."""
        self._closed = True
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server is shutting down"))
        self._jobs, self._queued_tokens = [], 0
        self._wake.set()
        if self._task is not None:
            await self._task
        self._worker.shutdown(wait=True)
