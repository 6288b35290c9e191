"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
AGREEMENT_BUCKETS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


class Metrics:
    """Requests, latency, queue depth, engine batches, tokens/s and shadow-model agreement."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pplx_requests_total", "HTTP requests answered",
                                ["endpoint", "model", "status"], registry=r)
        self.latency = Histogram("pplx_request_duration_seconds", "Request latency", ["endpoint", "model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("pplx_queue_depth", "Requests waiting for the model's worker", ["model"], registry=r)
        self.queue_tokens = Gauge("pplx_queue_tokens", "Tokens waiting for a scheduler step (bounded by "
                                  "--max-queue-tokens)", ["model"], registry=r)
        self.running = Gauge("pplx_requests_running", "Requests in the engine call now running", ["model"],
                             registry=r)
        self.in_flight = Gauge("pplx_requests_in_flight", "Admitted requests (waiting or running)", ["model"],
                               registry=r)
        self.batch_tokens = Histogram("pplx_batch_tokens", "Tokens per merged engine call", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_requests = Histogram("pplx_batch_requests", "Requests merged into one engine call", ["model"],
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.batch_seconds = Histogram("pplx_batch_seconds", "Engine time per merged call", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("pplx_tokens_total", "Tokens embedded", ["model"], registry=r)
        self.tokens_per_second = Gauge("pplx_tokens_per_second", "Throughput of the last engine call", ["model"],
                                       registry=r)
        self.cancelled = Counter("pplx_cancelled_requests_total", "Requests given up (work not yet run is "
                                 "dropped)", ["model", "reason"], registry=r)
        self.split = Counter("pplx_split_requests_total", "Requests routed by a traffic-split alias",
                             ["alias", "model"], registry=r)
        self.shadow_cosine = Histogram("pplx_shadow_cosine", "Mean cosine between primary and shadow embeddings "
                                       "of one request (models of equal dimension)", ["primary", "candidate"],
                                       buckets=AGREEMENT_BUCKETS, registry=r)
        self.shadow_structure = Histogram("pplx_shadow_similarity_correlation", "Pearson correlation of the "
                                          "pairwise similarities of one request's inputs under both models",
                                          ["primary", "candidate"], buckets=AGREEMENT_BUCKETS, registry=r)
        self.shadow_requests = Counter("pplx_shadow_requests_total", "Shadow embeddings by outcome",
                                       ["primary", "candidate", "outcome"], registry=r)

    def watch_model(self, name: str, depth: Callable[[], int], running: Callable[[], int],
                    in_flight: Callable[[], int], queued_tokens: Callable[[], int]) -> None:
        self.queue_depth.labels(name).set_function(depth)
        self.queue_tokens.labels(name).set_function(queued_tokens)
        self.running.labels(name).set_function(running)
        self.in_flight.labels(name).set_function(in_flight)

    def batch_observer(self, name: str) -> Callable[[int, int, float], None]:
        """What the model's scheduler calls after each step."""
        def observe(requests: int, tokens: int, seconds: float) -> None:
            self.batch_tokens.labels(name).observe(tokens)
            self.batch_requests.labels(name).observe(requests)
            self.batch_seconds.labels(name).observe(seconds)
            self.tokens.labels(name).inc(tokens)
            if seconds > 0:
                self.tokens_per_second.labels(name).set(tokens / seconds)
        return observe

    def observe_request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
