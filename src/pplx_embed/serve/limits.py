"""The server's limits, each its own knob (like TEI's); checked by :mod:`.pipeline` and the gate.

Per connection: ``idle_timeout`` without a request (before its first byte, or between keep-alive
requests), and at most ``max_connections`` at once. Per request: ``max_client_batch_size`` inputs,
``max_tokens_per_request`` tokens (and, before any tokenizing, as many characters as that many tokens
can hold), ``payload_limit`` bytes of body, ``header_timeout`` for its headers and ``read_timeout`` for
all of it to arrive (both from its first byte), and ``request_timeout`` to be answered. Per model:
``max_concurrent_requests`` in flight and ``max_queue_tokens`` waiting. Per scheduler step:
``max_step_tokens`` tokens (TEI's ``--max-batch-tokens``; ours names the engine's padded forward batch),
fewer when ``step_seconds`` says so, and ``max_batch_requests`` sequences.

Dependency-free, so that the command line can declare the flags without loading the server.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pplx_embed.errors import InputError

# A step is what a short request waits for. On CPU a 16K-token engine call takes seconds, while steps of a
# quarter second cost no throughput (a forward pass's cost per token is flat from a few hundred tokens on).
CPU_STEP_SECONDS = 0.25


@dataclass(frozen=True)
class ServeLimits:
    max_step_tokens: int | None = None  # tokens per scheduler step at most; None: the engine's max_batch_tokens
    step_seconds: float | None = None  # size steps to take this long; None: CPU_STEP_SECONDS on CPU, else off
    max_batch_requests: int | None = None  # sequences per scheduler step; None: the engine's batch size
    max_concurrent_requests: int = 128  # per model: tokenizing, waiting or running (429 beyond)
    max_queue_tokens: int = 1_000_000  # per model: tokens waiting for a step (429 beyond)
    max_client_batch_size: int = 512  # inputs (texts, or documents) per request
    max_tokens_per_request: int = 120_000
    max_chunks: int = 16_000  # chunks per contextual request
    max_tokens_per_document: int = 32_768
    payload_limit: int = 16 * 2**20  # request body bytes
    request_timeout: float = 60.0  # seconds until 504; the request's queued work is dropped
    read_timeout: float = 30.0  # seconds to receive a whole request (headers and body), else 408
    header_timeout: float = 10.0  # seconds to receive a request's headers (from its first byte), else 408
    idle_timeout: float = 5.0  # seconds a connection may wait without a request (uvicorn's keep-alive default)
    max_connections: int = 512  # open connections at once (nginx's worker_connections default); beyond, 503

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise InputError(f"{f.name.replace('_', '-')} must be positive, got {value!r}")
