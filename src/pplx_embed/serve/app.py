"""The FastAPI application: thin routes over the model registry and each model's pipeline.

``create_app(ServeConfig(...))`` returns an ASGI app for uvicorn (or a Ray Serve replica, :mod:`.replicas`).
Models load (and warm up) in a background thread after startup; ``GET /health`` and ``GET /ready`` answer 503
until they are ready (:mod:`.readiness`).

A request goes: gate (API key before the body is read, body size cap) → route (schema, model, key
scope, admission) → pipeline (check, tokenize once off the loop, fair scheduler, finish off the loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from pplx_embed.checks.filters import check_filter
from pplx_embed.errors import InputError
from pplx_embed.options import EmbedderOptions
from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.errors import APIError, clip, error_response, install_error_handlers, internal_error, quote
from pplx_embed.serve.http import TIMED_OUT
from pplx_embed.serve.indexes import ServedIndex, close_indexes, open_indexes
from pplx_embed.serve.limits import ServeLimits
from pplx_embed.serve.metrics import Metrics
from pplx_embed.serve.pipeline import Pipeline, Result, check_documents_within, check_texts_within
from pplx_embed.serve.readiness import Readiness
from pplx_embed.serve.registry import Registry, ServedModel, UnknownModel, as_float, model_names
from pplx_embed.serve.scheduler import Overloaded, ShuttingDown
from pplx_embed.serve.schemas import (
    ContextualRequest,
    ContextualResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    IndexDocumentsRequest,
    IndexSearchRequest,
    IndexSearchResponse,
    TEIEmbedRequest,
)
from pplx_embed.serve.ui import check_reports, is_open
from pplx_embed.serve.ui import router as ui_router
from pplx_embed.wire import QUANTIZATION_OF, contextual_response, embeddings_response

log = logging.getLogger("pplx_embed.serve")

INDEX_CALLS_WAIT = 10.0  # seconds index calls may take to end at shutdown before the process exits without them
ENDPOINTS = ("/v1/embeddings", "/v1/contextualizedembeddings", "/embed", "/v1/models", "/health", "/ready",
             "/metrics", "/v1/indexes", "/v1/indexes/{name}/search", "/v1/indexes/{name}/documents")
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # for probes and scrapers; with keys set, all else needs one


@dataclass
class ServeConfig:
    """Everything ``pplx-embed serve`` can be told. ``models`` items are ``(name or None, source)``;
    a source is an alias / directory / hub id (loaded with ``options``), or a loaded
    :class:`~pplx_embed.Embedder`. ``indexes`` items are ``(name, path)`` of indexes of served models."""

    models: list[tuple[str | None, object]]
    splits: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    shadows: dict[str, str] = field(default_factory=dict)
    indexes: list[tuple[str, str]] = field(default_factory=list)
    reports: str | Path | None = None  # `pplx-embed eval --output` directory shown by the /ui page
    keys: KeyRing = field(default_factory=KeyRing)
    limits: ServeLimits = field(default_factory=ServeLimits)
    options: EmbedderOptions = field(default_factory=EmbedderOptions.from_env)
    warmup: bool = True
    on_load_error: Callable[[BaseException], None] | None = None
    # under Ray Serve (serve/replicas.py): the running replicas for /health and /ready, and startup waits for the
    # models, so that Ray routes no request to a replica still loading
    replicas: Callable[[], int] | None = None
    load_before_serving: bool = False


def load_models(config: ServeConfig) -> list[tuple[str, object, list[str]]]:
    """Load (or take) each model, warm it up with one forward pass: ``(served name, embedder, all its names)``."""
    from pplx_embed.embedder import Embedder

    models: list[tuple[str, object, list[str]]] = []
    for name, source in config.models:
        embedder = source if isinstance(source, Embedder) else Embedder(options=config.options.replace(model=source))
        name = name or (source if isinstance(source, str) else embedder.name)
        if name in [n for n, _, _ in models]:
            raise InputError(f"two models are served as {name!r}; name them with --model NAME=SOURCE")
        if config.warmup:
            embedder.encode(["warm up"])
        models.append((name, embedder, model_names(name, source, embedder.name)))
    return models


def _init_torch_threads() -> None:
    """Run one parallel torch op in this long-lived thread before models load in a short-lived one.

    When a process's first parallel torch op runs in a thread that then exits, every later forward pass
    from other threads is much slower on a busy machine (thread-pool setup; docs/server.md, "Threads").
    """
    import torch

    torch.ones(256, 256) @ torch.ones(256, 256)


class _ClientGone(Exception):
    """The client disconnected before its request had arrived."""


class _Gate:
    """ASGI middleware: API key before the body (401), body cap (413), HEAD as GET without a body, 500 for
    bugs with the connection kept (logged with the traceback), 503 for requests still running when the
    graceful shutdown ends, and request count and latency (499: the client left, 408: it was too slow)."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, started, raw = time.perf_counter(), [500], [False], scope
        if scope["method"] == "HEAD":  # every GET route answers HEAD: uvicorn leaves the body out
            scope = {**scope, "method": "GET"}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS and not is_open(scope["path"]):
                authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None
                self.service.config.keys.check(authorization)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffer(scope, receive, send_status)
                if receive is None:
                    return
            await self.app(scope, receive, send_status)
        except APIError as exc:
            await error_response(exc.status, exc.message, exc.type, exc.code, exc.headers)(scope, receive, send_status)
        except _ClientGone:
            status[0] = 408 if raw.get(TIMED_OUT) else 499  # answered by the protocol, or nobody to answer
        except asyncio.CancelledError:  # uvicorn cancels what still runs when the graceful timeout ends
            if not started[0]:
                await error_response(503, "the server is shutting down; retry on another instance", "server_error",
                                     "shutting_down", {"Retry-After": "5"})(scope, receive, send_status)
        except Exception:  # a bug: logged, answered 500, the connection kept
            log.exception("unexpected error on %s %s", clip(scope["method"], 20), clip(scope["path"], 200))
            if not started[0]:
                await internal_error()(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", scope["path"])  # a template: /v1/indexes/{name}/search
            path = route if route in ENDPOINTS else "other"
            model = scope.get("state", {}).get("model", "")
            self.service.metrics.observe_request(path, model, status[0], time.perf_counter() - start)

    async def _buffer(self, scope, receive, send):
        """Read the body (refusing it past the cap) and return a ``receive`` that replays it (None once
        answered 413; :class:`_ClientGone` if the client leaves first)."""
        limit = self.service.config.limits.payload_limit
        too_large = error_response(413, f"request body is larger than {limit} bytes", "invalid_request_error",
                                   "payload_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await too_large(scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
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
    """The app's state: config, metrics, the registry and indexes once loaded, the worker pools."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.readiness = Readiness(config.replicas)
        self.registry: Registry | None = None
        self.indexes: dict[str, ServedIndex] = {}
        self.load_error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # tokenizing and finishing (quantize, base64, JSON) of every model; index calls (SQLite, blocking)
        self.prep = ThreadPoolExecutor(4, thread_name_prefix="pplx-prep")
        self.blocking = ThreadPoolExecutor(8, thread_name_prefix="pplx-index")
        self.shadows: set[asyncio.Task] = set()

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        _init_torch_threads()
        threading.Thread(target=self._load, name="pplx-load", daemon=True).start()

    def _load(self) -> None:
        try:
            served = []
            for name, embedder, names in load_models(self.config):
                pipeline = Pipeline(name, embedder, self.config.limits, self.prep, self.metrics.batch_observer(name))
                scheduler = pipeline.scheduler
                self.metrics.watch_model(name, lambda s=scheduler: s.depth, lambda s=scheduler: s.running,
                                         lambda s=scheduler: s.in_flight, lambda s=scheduler: s.queued_tokens)
                served.append(ServedModel(name, embedder, pipeline, names))
            registry = Registry(served, self.config.splits, self.config.shadows, self.metrics)
            self.indexes = open_indexes(self.config.indexes, registry.models, self.loop,
                                        self.config.limits.request_timeout)
            self.registry = registry
            self.readiness.loaded(registry.names)
            log.info("serving %s", ", ".join(self.registry.names + [f"index {name}" for name in self.indexes]))
        except BaseException as exc:  # noqa: BLE001 - reported by /health and the CLI
            self.load_error = exc
            self.readiness.failed(exc)
            log.error("could not load the models and indexes: %s", exc)
            if self.config.on_load_error is not None:
                self.config.on_load_error(exc)

    async def stop(self) -> None:
        """After uvicorn's graceful wait: drop the work left (its requests were answered 503), let index calls
        still running end (their embeddings now fail), then close the indexes."""
        for task in list(self.shadows):
            task.cancel()
        if self.registry is not None:
            for model in self.registry.models.values():
                await model.pipeline.scheduler.close()
        self.prep.shutdown(wait=False, cancel_futures=True)
        ended = asyncio.get_running_loop().run_in_executor(None, lambda: self.blocking.shutdown(cancel_futures=True))
        try:
            await asyncio.wait_for(ended, INDEX_CALLS_WAIT)
        except TimeoutError:  # a store still writing: leave it to its own crash safety
            log.warning("index calls still running after %g s; exiting without closing the indexes",
                        INDEX_CALLS_WAIT)
            return
        close_indexes(self.indexes)

    # ---- routing ----------------------------------------------------------------------------
    def ready_registry(self) -> Registry:
        if self.registry is None:
            message = f"models failed to load: {self.load_error}" if self.load_error else "models are still loading"
            raise APIError(503, message, "server_error", "not_ready", {"Retry-After": "5"})
        return self.registry

    def route(self, request: Request, name: str | None) -> ServedModel:
        """Pick the model serving ``name`` and check the key's scope (503, 404, 403 on failure)."""
        registry = self.ready_registry()
        name = name or registry.default
        if not registry.known(name):
            raise APIError(404, f"model {quote(name)} is not served here; available: {', '.join(registry.names)}",
                           "not_found_error", "model_not_found")
        self.config.keys.check(request.headers.get("authorization"), registry.names_of(name))
        try:
            served = registry.resolve(name)
        except UnknownModel as exc:
            raise APIError(404, str(exc), "not_found_error", "model_not_found") from None
        request.state.model = served.name
        return served

    def route_index(self, request: Request, name: str) -> tuple[ServedIndex, ServedModel]:
        """Pick index ``name`` and the model it embeds with, and check the key's scope (503, 404, 403)."""
        registry = self.ready_registry()
        served = self.indexes.get(name)
        if served is None:
            raise APIError(404, f"index {quote(name)} is not served here; available: "
                           f"{', '.join(self.indexes) or 'none'}", "not_found_error", "index_not_found")
        self.config.keys.check(request.headers.get("authorization"), registry.names_of(served.model))
        request.state.model = served.model
        return served, registry.models[served.model]

    # ---- running work -----------------------------------------------------------------------
    async def answer(self, request: Request, served: ServedModel, work: Callable[[], Awaitable[Response]]):
        """Run ``work()`` holding one of the model's places, bounded by the timeout and the client.

        A request that times out (504) or whose client goes away is cancelled: its queued work is dropped.
        """
        with served.pipeline.scheduler.slot():
            task = asyncio.ensure_future(work())
            watcher = asyncio.ensure_future(_disconnected(request))
            try:
                done, _ = await asyncio.wait({task, watcher}, timeout=self.config.limits.request_timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this request is cancelled itself (the graceful shutdown ended)
                watcher.cancel()
                if not task.done():
                    task.cancel()  # drops its scheduler entry: nothing more of it is computed
            if task in done:
                return task.result()
            with suppress(asyncio.CancelledError, Exception):
                await task  # its scheduler entry is gone once this returns
        reason = "disconnect" if watcher in done else "timeout"
        self.metrics.cancelled.labels(served.name, reason).inc()
        if watcher in done:
            return Response(status_code=499)  # nobody is listening any more
        raise APIError(504, f"request took longer than {self.config.limits.request_timeout:g} s", "timeout_error",
                       "timeout")

    async def in_thread(self, fn: Callable[[], Response]) -> Response:
        """Run a blocking call (an index operation) on the index pool."""
        return await asyncio.get_running_loop().run_in_executor(self.blocking, fn)

    def shadow(self, served: ServedModel, embed: Callable[[Pipeline, int | None], Awaitable[Result]],
               primary: np.ndarray, quantization: str, dimensions: int | None) -> None:
        """Embed the same inputs with ``served``'s shadow model in the background and record agreement."""
        registry = self.registry
        candidate = registry.shadow_of(served.name) if registry else None
        if candidate is None:
            return
        labels = (served.name, candidate.name)
        dims = dimensions if candidate.embedder.dimension == served.embedder.dimension else None

        async def job():
            try:
                with candidate.pipeline.scheduler.slot():
                    vectors = (await embed(candidate.pipeline, dims)).vectors[quantization]
                if isinstance(vectors, list):  # contextual: one array per document
                    vectors = np.concatenate(vectors)
            except (Overloaded, ShuttingDown):
                self.metrics.shadow_requests.labels(*labels, "dropped").inc()
                return
            except Exception as exc:  # noqa: BLE001 - a shadow never affects the primary answer
                self.metrics.shadow_requests.labels(*labels, "error").inc()
                log.warning("shadow %s=%s failed: %s", *labels, exc)
                return
            width = dimensions or served.embedder.dimension
            registry.record_shadow(*labels, as_float(primary, quantization, width),
                                   as_float(vectors, quantization, dims or candidate.embedder.dimension))

        task = asyncio.get_running_loop().create_task(job())
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)


async def _disconnected(request: Request) -> None:
    """Return when the client has gone away (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 408, 413, 422, 429, 500, 503, 504)}


def create_app(config: ServeConfig) -> FastAPI:
    """The ASGI app serving ``config``'s models."""
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        if config.load_before_serving:
            await service.readiness.settled()
            if service.load_error is not None:
                raise service.load_error
        yield
        await service.stop()

    # /openapi.json is served (behind the key, like the API it describes); /docs and /redoc are not: they are
    # HTML pages running scripts from a CDN, which offline deployments cannot reach
    app = FastAPI(title="pplx-embed", summary="Perplexity-, OpenAI- and TEI-compatible embedding server",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(_Gate, service=service)
    app.include_router(service.readiness.router())
    app.include_router(ui_router(config.keys.enabled, check_reports(config.reports)))

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
    async def embeddings(body: EmbeddingsRequest, request: Request):
        """Perplexity ``/v1/embeddings`` (``base64_int8`` / ``base64_binary``), also OpenAI ``float`` / ``base64``."""
        served = service.route(request, body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        quantization = QUANTIZATION_OF[body.encoding_format]

        async def work() -> Response:
            result = await served.pipeline.embed(texts, (quantization,), body.dimensions, finish=lambda v, tokens: (
                JSONResponse(embeddings_response(v[quantization], body.encoding_format, served.name, tokens))))
            service.shadow(served, lambda p, d: p.embed(texts, (quantization,), d), result.vectors[quantization],
                           quantization, body.dimensions)
            result.body.headers.update(result.headers())
            return result.body

        return await service.answer(request, served, work)

    @app.post("/v1/contextualizedembeddings", response_model=ContextualResponse, responses=ERRORS)
    async def contextualized_embeddings(body: ContextualRequest, request: Request):
        """Late chunking: one embedding per chunk, each document in one forward pass."""
        served = service.route(request, body.model)
        documents = body.input
        quantization = QUANTIZATION_OF[body.encoding_format]

        async def work() -> Response:
            result = await served.pipeline.embed_contextual(documents, (quantization,), body.dimensions, finish=(
                lambda arrays, tokens: JSONResponse(contextual_response(arrays[quantization], body.encoding_format,
                                                                        served.name, tokens))))
            service.shadow(served, lambda p, d: p.embed_contextual(documents, (quantization,), d),
                           np.concatenate(result.vectors[quantization]), quantization, body.dimensions)
            result.body.headers.update(result.headers())
            return result.body

        return await service.answer(request, served, work)

    @app.post("/embed", response_model=list[list[float]], responses=ERRORS)
    async def tei_embed(body: TEIEmbedRequest, request: Request):
        """Text Embeddings Inference ``/embed``: float vectors, L2-normalized unless ``normalize: false``."""
        served = service.route(request, body.model)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        truncation = body.truncation_direction.lower() if body.truncate else None

        def finish(outputs: dict[str, np.ndarray], tokens: int) -> Response:
            vectors = outputs["pooled"]
            if body.normalize:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
            return JSONResponse(vectors.tolist(), headers={"x-total-tokens": str(tokens)})

        async def work() -> Response:
            result = await served.pipeline.embed(texts, ("pooled",), body.dimensions, truncation, finish=finish)
            result.body.headers.update(result.headers())
            return result.body

        return await service.answer(request, served, work)

    @app.get("/v1/indexes")
    def indexes(request: Request):
        """Served indexes (those whose model the API key may use), each with its model and stats."""
        authorization = request.headers.get("authorization")
        registry = service.ready_registry()
        data = [ix.describe() for ix in service.indexes.values()
                if config.keys.allows(authorization, registry.names_of(ix.model))]
        return {"object": "list", "data": data}

    @app.post("/v1/indexes/{name}/search", response_model=IndexSearchResponse, responses=ERRORS)
    async def index_search(name: str, body: IndexSearchRequest, request: Request):
        """The ``k`` best items of index ``name`` for each query (binary first stage, int8 rescoring)."""
        ix, served = service.route_index(request, name)
        queries = check_texts_within(body.query, served.embedder, config.limits)
        where = check_filter(body.filter)

        def search() -> Response:
            return JSONResponse(ix.search(queries, body.k, filter=where, candidates=body.candidates,
                                          precision=body.precision, dimensions=body.dimensions,
                                          neighbours=body.neighbours))

        return await service.answer(request, served, lambda: service.in_thread(search))

    @app.post("/v1/indexes/{name}/documents", responses=ERRORS)
    async def index_documents(name: str, body: IndexDocumentsRequest, request: Request):
        """Embed and store texts (``ids``) or contextual documents (``doc_ids``); atomic per request."""
        ix, served = service.route_index(request, name)
        if body.documents is not None:  # the server's limits; the index checks ids and metadata before embedding
            documents = check_documents_within(body.documents, served.embedder, config.limits)
        else:
            texts = check_texts_within(body.texts, served.embedder, config.limits)

        def store() -> Response:
            if body.documents is not None:
                added = ix.index.add_documents(documents, body.doc_ids, metadata=body.metadata, replace=body.upsert)
            else:
                write = ix.index.upsert if body.upsert else ix.index.add
                added = write(texts, ids=body.ids, metadata=body.metadata)
            return JSONResponse({"added": added})

        return await service.answer(request, served, lambda: service.in_thread(store))

    @app.get("/v1/models")
    async def models(request: Request):
        """Served models and split aliases (those the API key may use), each model with its other names."""
        authorization = request.headers.get("authorization")
        registry = service.ready_registry()
        data = [m for m in registry.describe() if config.keys.allows(authorization, registry.names_of(m["id"]))]
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def metrics():
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app

