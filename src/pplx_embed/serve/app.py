"""The FastAPI application: thin routes over the model registry and its batchers.

``create_app(ServeConfig(...))`` returns an ASGI app for uvicorn. Models load (and warm up) in a
background thread after startup; ``GET /health`` answers 503 until they are ready.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.batcher import QueueFull, ShuttingDown, Ticket
from pplx_embed.serve.errors import APIError, error_response, install_error_handlers
from pplx_embed.serve.indexes import ServedIndex, close_indexes, open_indexes
from pplx_embed.serve.limits import Limits, check_documents, check_texts
from pplx_embed.serve.metrics import Metrics
from pplx_embed.serve.registry import Registry, ServedModel, UnknownModel, as_float
from pplx_embed.serve.schemas import (
    QUANTIZATION_OF,
    ContextualRequest,
    ContextualResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    IndexDocumentsRequest,
    IndexSearchRequest,
    IndexSearchResponse,
    TEIEmbedRequest,
    encode_vector,
)

log = logging.getLogger("pplx_embed.serve")

ENDPOINTS = ("/v1/embeddings", "/v1/contextualizedembeddings", "/embed", "/v1/models", "/health", "/metrics",
             "/v1/indexes", "/v1/indexes/{name}/search", "/v1/indexes/{name}/documents")


@dataclass
class ServeConfig:
    """Everything ``pplx-embed serve`` can be told. ``models`` items are ``(name or None, source)``;
    a source is an alias / directory / hub id, or an already loaded :class:`~pplx_embed.Embedder`.
    ``indexes`` items are ``(name, path)`` of :mod:`pplx_embed.index` indexes of served models."""

    models: list[tuple[str | None, object]]
    splits: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    shadows: dict[str, str] = field(default_factory=dict)
    indexes: list[tuple[str, str]] = field(default_factory=list)
    keys: KeyRing = field(default_factory=KeyRing)
    limits: Limits = field(default_factory=Limits)
    max_queue: int = 128
    request_timeout: float = 60.0
    max_body_bytes: int = 16 * 2**20
    device: str | None = None
    dtype: str | None = None
    max_batch_tokens: int = 16384
    warmup: bool = True
    on_load_error: Callable[[BaseException], None] | None = None


def load_models(config: ServeConfig) -> dict[str, object]:
    """Load (or take) each model, name it, and warm it up with one forward pass."""
    from pplx_embed import Embedder

    models: dict[str, object] = {}
    for name, source in config.models:
        embedder = source if isinstance(source, Embedder) else Embedder(
            source, device=config.device, dtype=config.dtype, max_batch_tokens=config.max_batch_tokens)
        name = name or embedder.name
        if name in models:
            raise ValueError(f"two models are served as {name!r}; name them with --model NAME=SOURCE")
        if config.warmup:
            embedder.encode(["warm up"])
        models[name] = embedder
    return models


def _init_torch_threads() -> None:
    """Run one parallel torch op in this long-lived thread before models load in a short-lived one.

    Measured on CPU: when a process's first parallel torch op runs in a thread that then exits,
    every later forward pass from other threads is ~10x slower on a busy machine (thread-pool setup).
    """
    import torch

    torch.ones(256, 256) @ torch.ones(256, 256)


class _Gate:
    """ASGI middleware: caps request bodies (413) and records request count and latency."""

    def __init__(self, app, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffer(scope, receive, send_status)
                if receive is None:
                    return
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)  # the template, e.g. /v1/indexes/{name}/search
            path = route if route in ENDPOINTS else "other"
            model = scope.get("state", {}).get("model", "")
            self.metrics.observe_request(path, model, status[0], time.perf_counter() - start)

    async def _buffer(self, scope, receive, send):
        """Read the body (refusing it past the cap) and return a ``receive`` that replays it."""
        too_large = error_response(413, f"request body is larger than {self.max_body_bytes} bytes",
                                   "invalid_request_error", "payload_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await too_large(scope, receive, send)
                return None
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


class Service:
    """The app's state: config, metrics, the registry once loaded, and the request thread pool."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.registry: Registry | None = None
        self.indexes: dict[str, ServedIndex] = {}
        self.load_error: BaseException | None = None
        self.executor = ThreadPoolExecutor(max_workers=max(8, config.max_queue * len(config.models) + 4),
                                           thread_name_prefix="pplx-request")

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        _init_torch_threads()
        threading.Thread(target=self._load, name="pplx-load", daemon=True).start()

    def _load(self) -> None:
        try:
            models = load_models(self.config)
            registry = Registry(models, self.config.splits, self.config.shadows, self.config.max_queue, self.metrics)
            try:
                self.indexes = open_indexes(self.config.indexes, registry.models)
            except BaseException:
                registry.close()
                raise
            self.registry = registry
            log.info("serving %s", ", ".join(self.registry.names + [f"index {name}" for name in self.indexes]))
        except BaseException as exc:  # noqa: BLE001 - reported by /health and the CLI
            self.load_error = exc
            log.error("could not load the models and indexes: %s", exc)
            if self.config.on_load_error is not None:
                self.config.on_load_error(exc)

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.close()
        close_indexes(self.indexes)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---- routing ----------------------------------------------------------------------------
    def ready_registry(self) -> Registry:
        if self.registry is None:
            message = f"models failed to load: {self.load_error}" if self.load_error else "models are still loading"
            raise APIError(503, message, "server_error", "not_ready", {"Retry-After": "5"})
        return self.registry

    def route(self, request: Request, name: str | None) -> ServedModel:
        """Authenticate, then pick the model serving ``name`` (401, 503, 404, 403 on failure)."""
        authorization = request.headers.get("authorization")
        self.config.keys.check(authorization)
        registry = self.ready_registry()
        name = name or registry.default
        if name not in registry.names:
            raise APIError(404, f"model {name!r} is not served here; available: {', '.join(registry.names)}",
                           "not_found_error", "model_not_found")
        self.config.keys.check(authorization, name)
        try:
            served = registry.resolve(name)
        except UnknownModel as exc:
            raise APIError(404, str(exc), "not_found_error", "model_not_found") from None
        request.state.model = served.name
        return served

    def route_index(self, request: Request, name: str) -> tuple[ServedIndex, ServedModel]:
        """Authenticate, then pick index ``name`` and the model it embeds with (401, 503, 404, 403)."""
        authorization = request.headers.get("authorization")
        self.config.keys.check(authorization)
        registry = self.ready_registry()
        served = self.indexes.get(name)
        if served is None:
            raise APIError(404, f"index {name!r} is not served here; available: {', '.join(self.indexes) or 'none'}",
                           "not_found_error", "index_not_found")
        self.config.keys.check(authorization, served.model)
        request.state.model = served.model
        return served, registry.models[served.model]

    # ---- running work -----------------------------------------------------------------------
    async def run(self, request: Request, served: ServedModel, work: Callable[[object, Ticket], object]):
        """Run ``work(model view, ticket)`` in a thread, bounded by the queue, timeout and the client."""
        try:
            served.batcher.admit()
        except QueueFull as exc:
            raise APIError(429, str(exc), "rate_limit_error", "queue_full", {"Retry-After": "1"}) from None
        except ShuttingDown as exc:
            raise APIError(503, str(exc), "server_error", "shutting_down") from None
        ticket = Ticket()

        def job():
            try:
                return work(served.batcher.view(ticket), ticket)
            finally:
                served.batcher.release()

        future = asyncio.get_running_loop().run_in_executor(self.executor, job)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"
        watcher = asyncio.ensure_future(_disconnected(request))
        done, _ = await asyncio.wait({future, watcher}, timeout=self.config.request_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        if future in done:
            try:
                return future.result()
            except (ValueError, TypeError) as exc:
                raise APIError(400, str(exc), "invalid_request_error", "invalid_value") from None
            except ShuttingDown as exc:
                raise APIError(503, str(exc), "server_error", "shutting_down") from None
        ticket.cancel()
        reason = "disconnect" if watcher in done else "timeout"
        self.metrics.cancelled.labels(served.name, reason).inc()
        if watcher in done:
            return Response(status_code=499)  # nobody is listening any more
        raise APIError(504, f"request took longer than {self.config.request_timeout:g} s", "timeout_error",
                       "timeout")

    def shadow(self, served: ServedModel, encode: Callable[[object, int | None], np.ndarray],
               primary: np.ndarray, quantization: str, dimensions: int | None) -> None:
        """Embed the same inputs with ``served``'s shadow model in the background and record agreement."""
        registry = self.registry
        candidate = registry.shadow_of(served.name) if registry else None
        if candidate is None:
            return
        labels = (served.name, candidate.name)
        same = candidate.embedder.dimension == served.embedder.dimension
        dims = dimensions if same else None
        try:
            candidate.batcher.admit()
        except (QueueFull, ShuttingDown):
            self.metrics.shadow_requests.labels(*labels, "dropped").inc()
            return

        def job():
            try:
                vectors = encode(candidate.batcher.view(Ticket()), dims)
                width = dimensions or served.embedder.dimension
                registry.record_shadow(*labels, as_float(primary, quantization, width),
                                       as_float(vectors, quantization, dims or candidate.embedder.dimension))
            except Exception as exc:  # noqa: BLE001 - a shadow never affects the primary answer
                self.metrics.shadow_requests.labels(*labels, "error").inc()
                log.warning("shadow %s=%s failed: %s", *labels, exc)
            finally:
                candidate.batcher.release()

        self.executor.submit(job)


async def _disconnected(request: Request) -> None:
    """Return when the client has gone away (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(tokens: int) -> dict:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 422, 429, 503, 504)}


def create_app(config: ServeConfig) -> FastAPI:
    """The ASGI app serving ``config``'s models."""
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="pplx-embed", summary="Perplexity-, OpenAI- and TEI-compatible embedding server",
                  lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(_Gate, max_body_bytes=config.max_body_bytes, metrics=service.metrics)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
    async def embeddings(body: EmbeddingsRequest, request: Request):
        """Perplexity ``/v1/embeddings`` (``base64_int8`` / ``base64_binary``), also OpenAI ``float`` / ``base64``."""
        served = service.route(request, body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        quantization = QUANTIZATION_OF[body.encoding_format]

        def work(model, ticket: Ticket) -> JSONResponse:
            check_texts(texts, model, config.limits)
            vectors = model.encode(texts, quantization=quantization, dimensions=body.dimensions)
            service.shadow(served, lambda m, d: m.encode(texts, quantization=quantization, dimensions=d),
                           vectors, quantization, body.dimensions)
            data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                    for i, v in enumerate(vectors)]
            return JSONResponse({"object": "list", "data": data, "model": served.name,
                                 "usage": _usage(ticket.tokens)})

        return await service.run(request, served, work)

    @app.post("/v1/contextualizedembeddings", response_model=ContextualResponse, responses=ERRORS)
    async def contextualized_embeddings(body: ContextualRequest, request: Request):
        """Late chunking: one embedding per chunk, each document in one forward pass."""
        served = service.route(request, body.model)
        documents = body.input
        quantization = QUANTIZATION_OF[body.encoding_format]

        def work(model, ticket: Ticket) -> JSONResponse:
            check_documents(documents, model, config.limits)
            arrays = model.encode_contextual(documents, quantization=quantization, dimensions=body.dimensions)
            service.shadow(served, lambda m, d: np.concatenate(
                m.encode_contextual(documents, quantization=quantization, dimensions=d)),
                np.concatenate(arrays), quantization, body.dimensions)
            data = [{"object": "contextualized_embedding", "index": d,
                     "data": [{"object": "embedding", "index": k, "embedding": encode_vector(v, body.encoding_format)}
                              for k, v in enumerate(array)]}
                    for d, array in enumerate(arrays)]
            return JSONResponse({"object": "list", "data": data, "model": served.name,
                                 "usage": _usage(ticket.tokens)})

        return await service.run(request, served, work)

    @app.post("/embed", response_model=list[list[float]], responses=ERRORS)
    async def tei_embed(body: TEIEmbedRequest, request: Request):
        """Text Embeddings Inference ``/embed``: float vectors, L2-normalized unless ``normalize: false``."""
        served = service.route(request, body.model)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        truncation = body.truncation_direction.lower() if body.truncate else None

        def work(model, ticket: Ticket) -> JSONResponse:
            counts = check_texts(texts, model, config.limits, truncate=body.truncate)
            vectors = model.encode(texts, quantization="float", dimensions=body.dimensions, truncation=truncation)
            if body.normalize:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
            return JSONResponse(vectors.tolist(), headers={"x-total-tokens": str(sum(counts))})

        return await service.run(request, served, work)

    @app.get("/v1/indexes")
    def indexes(request: Request):
        """Served indexes (those whose model the API key may use), each with its model and stats."""
        authorization = request.headers.get("authorization")
        config.keys.check(authorization)
        service.ready_registry()
        data = [ix.describe() for ix in service.indexes.values() if config.keys.allows(authorization, ix.model)]
        return {"object": "list", "data": data}

    @app.post("/v1/indexes/{name}/search", response_model=IndexSearchResponse, responses=ERRORS)
    async def index_search(name: str, body: IndexSearchRequest, request: Request):
        """The ``k`` best items of index ``name`` for each query (binary first stage, int8 rescoring)."""
        ix, served = service.route_index(request, name)
        queries = [body.query] if isinstance(body.query, str) else body.query

        def work(model, ticket: Ticket) -> JSONResponse:
            check_texts(queries, model, config.limits)
            with ix.embedder.bound(model):
                results = ix.index.search_many(queries, body.k, filter=body.filter, candidates=body.candidates)
            data = [{"index": i, "hits": [hit.to_dict() for hit in hits]} for i, hits in enumerate(results)]
            return JSONResponse({"object": "list", "data": data, "model": ix.index.model})

        return await service.run(request, served, work)

    @app.post("/v1/indexes/{name}/documents", responses=ERRORS)
    async def index_documents(name: str, body: IndexDocumentsRequest, request: Request):
        """Embed and store texts (``ids``) or contextual documents (``doc_ids``); atomic per request."""
        ix, served = service.route_index(request, name)

        def work(model, ticket: Ticket) -> JSONResponse:
            with ix.embedder.bound(model):
                if body.documents is not None:
                    check_documents(body.documents, model, config.limits)
                    added = ix.index.add_documents(body.documents, body.doc_ids, metadata=body.metadata,
                                                   replace=body.upsert)
                else:
                    check_texts(body.texts, model, config.limits)
                    write = ix.index.upsert if body.upsert else ix.index.add
                    added = write(body.texts, ids=body.ids, metadata=body.metadata)
            return JSONResponse({"added": added})

        return await service.run(request, served, work)

    @app.get("/v1/models")
    async def models(request: Request):
        """Served models and split aliases (those the API key may use)."""
        authorization = request.headers.get("authorization")
        config.keys.check(authorization)
        registry = service.ready_registry()
        data = [m for m in registry.describe() if config.keys.allows(authorization, m["id"])]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        """200 once every model is loaded and warmed up, else 503."""
        if service.registry is None:
            status = f"failed: {service.load_error}" if service.load_error else "loading"
            return JSONResponse({"status": status}, 503, headers={"Retry-After": "5"})
        return {"status": "ok", "models": service.registry.names}

    @app.get("/metrics")
    async def metrics():
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
