"""``pplx-embed serve --replicas N``: the same server as Ray Serve replicas behind Ray's HTTP proxy.

Each replica is one :func:`~pplx_embed.serve.app.create_app` behind ``serve.ingress``: the same routes, API keys,
limits, fair scheduler per model, A/B split and shadow, and served indexes. A replica finishes loading and
warming its models before Ray sends it a request (``load_before_serving``), so a replica added by the autoscaler
never answers ``not_ready``. Ray's proxy spreads requests over the replicas; Ray Serve scales them between
``--autoscale MIN:MAX`` on ongoing requests per replica (``--target-ongoing-requests``).

Overload still answers 429 with ``Retry-After``: ``max_ongoing_requests`` (what Ray lets through to a replica)
is the replica's own admission limit (``--max-concurrent-requests`` per model) plus room for probes, so a
request beyond the limit reaches a replica and is refused there, never parked in Ray's proxy.

Readiness is the application's: ``/ready`` is routed to a small ``pplx-embed-ready`` application that answers
503 until the server application is running (every initial replica loaded and warmed) and again once draining.
``/health`` is answered by a replica and reports the replicas running.

:func:`run` is the command: Ray is started locally (or an existing cluster joined with ``--ray-address``),
both applications deployed, and on SIGTERM / Ctrl-C the server drains: ``/ready`` 503 (for ``--drain-seconds``),
then the server application is deleted, which lets every request in flight finish (up to
``--graceful-timeout``), then Serve and a local Ray are shut down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.schema import ApplicationStatus

from pplx_embed.errors import InputError
from pplx_embed.serve.app import ServeConfig, create_app

log = logging.getLogger("pplx_embed.serve")

APP = "pplx-embed"  # the server application, at /
READY_APP = "pplx-embed-ready"  # the readiness probe, at /ready
DEPLOYMENT = "EmbeddingServer"
PROBE_ROOM = 32  # requests a replica takes beyond its models' admission limits: /health, /metrics, /v1/models, /ui
DEFAULT_TARGET_ONGOING_REQUESTS = 8  # see docs/deploy.md, "Autoscaling"
# handed on to every replica when set in the command's environment (models and caches are found the same way)
PASSED_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE", "PPLX_EMBED_CACHE",
              "PPLX_EMBED_MODEL")


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas, where, and how they scale and stop (``pplx-embed serve``'s replica flags)."""

    replicas: int = 1  # fixed count, or the initial count when autoscaling
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING_REQUESTS
    upscale_delay: float = 30.0  # Ray Serve's defaults
    downscale_delay: float = 600.0
    replica_cpus: float | None = None  # None: the cluster's CPUs shared by the most replicas (≤ one node's)
    replica_gpus: float = 0.0
    address: str | None = None  # a Ray cluster; None: start Ray on this machine
    host: str = "127.0.0.1"
    port: int = 8000
    drain_seconds: float = 0.0
    graceful_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InputError(f"--replicas must be at least 1, got {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 1 <= low <= high:
                raise InputError(f"--autoscale MIN:MAX needs 1 <= MIN <= MAX, got {low}:{high}")
            if not low <= self.replicas <= high:
                raise InputError(f"--replicas {self.replicas} must lie within --autoscale {low}:{high}")
        if self.port == 0:
            raise InputError("--port 0 cannot be used with replicas: Ray's proxy needs a fixed port")

    @property
    def most(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas


def max_ongoing_requests(config: ServeConfig) -> int:
    """What Ray lets through to one replica: the replica's own admission limit (so that it, not Ray's queue,
    answers overload with 429 and ``Retry-After``) plus room for probes and metrics."""
    return config.limits.max_concurrent_requests * len(config.models) + PROBE_ROOM


def replica_cpus(plan: ReplicaPlan, nodes: list[float]) -> float:
    """CPUs per replica: ``plan.replica_cpus``, else the cluster's CPUs (``nodes``: CPUs of each node) shared by
    the most replicas, at most one node's."""
    if plan.replica_cpus is not None:
        return plan.replica_cpus
    return float(max(1, min(int(max(nodes, default=1)), int(sum(nodes)) // plan.most)))


def deployment_options(config: ServeConfig, plan: ReplicaPlan, cpus: float) -> dict:
    """Ray Serve options of the server deployment."""
    threads = str(max(1, int(cpus)))
    env = {"PPLX_EMBED_THREADS": threads, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    options = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": max_ongoing_requests(config),
        "max_queued_requests": max_ongoing_requests(config) * plan.most,  # Ray's proxy never queues without bound
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": plan.replica_gpus, "runtime_env": {"env_vars": env}},
        "graceful_shutdown_timeout_s": plan.graceful_timeout,
        "graceful_shutdown_wait_loop_s": 0.5,
        "max_constructor_retry_count": 3,  # a model that cannot load fails the deployment soon
    }
    if plan.autoscale is None:
        options["num_replicas"] = plan.replicas
    else:
        low, high = plan.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": plan.replicas,
            "target_ongoing_requests": plan.target_ongoing_requests,
            "upscale_delay_s": plan.upscale_delay, "downscale_delay_s": plan.downscale_delay}
    return options


def running_replicas(app: str = APP) -> int:
    """Replicas of the server application now running (0 when it is not deployed)."""
    overview = serve.status().applications.get(app)
    if overview is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in overview.deployments.values())


@serve.ingress()
class EmbeddingServer:
    """One replica: the server of ``config`` (:func:`~pplx_embed.serve.app.create_app`)."""

    def __init__(self, config: ServeConfig):
        self.config = replace(config, replicas=functools.partial(running_replicas, APP), load_before_serving=True,
                              on_load_error=None)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.config)


@serve.ingress()
class ReadinessProbe:
    """``GET /ready`` of the whole application: 503 until it runs, and again once draining."""

    def __init__(self, app: str = APP):
        self.server_app, self.draining = app, False

    def drain(self) -> None:
        self.draining = True

    def __serve_build_asgi_app__(self) -> FastAPI:
        probe = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @probe.get("")  # Ray hands the app the path below its route prefix: "" for /ready
        async def ready():
            overview = (await asyncio.to_thread(serve.status)).applications.get(self.server_app)
            replicas = 0 if overview is None else sum(d.replica_states.get("RUNNING", 0)
                                                      for d in overview.deployments.values())
            if self.draining or overview is None or overview.status != ApplicationStatus.RUNNING:
                status = "draining" if self.draining else "loading"
                if overview is not None and overview.status == ApplicationStatus.DEPLOY_FAILED:
                    status = f"failed: {overview.message}"
                return JSONResponse({"status": status, "replicas": replicas}, 503, headers={"Retry-After": "5"})
            return {"status": "ready", "replicas": replicas}

        return probe


def _absolute(config: ServeConfig) -> ServeConfig:
    """Paths as seen from this directory (Ray workers run elsewhere): model directories, indexes, reports."""
    def fix(path):
        return os.path.abspath(path) if isinstance(path, str) and Path(path).exists() else path

    return replace(config, models=[(name, fix(source)) for name, source in config.models],
                   indexes=[(name, fix(path)) for name, path in config.indexes], reports=fix(config.reports))


class _Stop(Exception):
    """SIGTERM or Ctrl-C arrived while starting."""


def check_models(config: ServeConfig) -> None:
    """The common mistakes in one line before Ray starts: every model must load here, a ``BASE+ADAPTER`` as its
    base and adapter (the options split and check them)."""
    from pplx_embed.model.checkpoint import load_checkpoint

    for _, source in config.models:
        load_checkpoint(config.options.replace(model=source or config.options.model).model)


def run(config: ServeConfig, plan: ReplicaPlan) -> int:
    """Serve ``config`` as Ray Serve replicas until SIGTERM / Ctrl-C, then drain and shut down."""
    for _, source in config.models:
        if source is not None and not isinstance(source, str):
            raise InputError("replicas load their models themselves: give model names or directories")
    local = plan.address is None
    if local:  # on a cluster, the models are the nodes'
        check_models(config)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    stop, starting, received = threading.Event(), [True], []

    def on_signal(signum, frame):
        received.append(signum)
        stop.set()
        if starting[0]:
            starting[0] = False
            raise _Stop

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address="local" if local else plan.address, include_dashboard=False if local else None,
                 logging_level=logging.WARNING)
        for s in previous:  # after ray.init, which sets its own
            signal.signal(s, on_signal)
        nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
        cpus = replica_cpus(plan, nodes)
        limits = config.limits
        serve.start(http_options={"host": plan.host, "port": plan.port,
                                  "request_timeout_s": limits.request_timeout + limits.read_timeout + 5})
        serve.run(serve.deployment(ReadinessProbe, name="ReadinessProbe", num_replicas=1,
                                   ray_actor_options={"num_cpus": 0}).bind(APP), name=READY_APP,
                  route_prefix="/ready")
        try:
            serve.run(serve.deployment(EmbeddingServer, **deployment_options(config, plan, cpus)).bind(
                _absolute(config)), name=APP, route_prefix="/")
        except RuntimeError as exc:
            raise InputError(f"could not start the replicas (see the replica log above): {_first_line(exc)}") \
                from None
        starting[0] = False
        scaling = f", autoscaling {plan.autoscale[0]}-{plan.autoscale[1]}" if plan.autoscale else ""
        log.info("serving at http://%s:%d with %d replica(s) of %g CPU%s", plan.host, plan.port,
                 running_replicas(), cpus, scaling)
        while not stop.wait(0.5):
            pass
        _drain(plan, received[0])
    except _Stop:  # the application may have come up before serve.run noticed (it polls once a second)
        overview = serve.status().applications.get(APP) if ray.is_initialized() else None
        if overview is not None and overview.status == ApplicationStatus.RUNNING:
            _drain(plan, received[0])
        else:
            log.info("stopped while starting")
    finally:
        starting[0] = False
        signal.signal(signal.SIGTERM, lambda *_: None)  # a second signal no longer interrupts the shutdown
        try:
            if ray.is_initialized():
                for app in (APP, READY_APP):
                    serve.delete(app)
                if local:
                    serve.shutdown()
        finally:
            ray.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
    return 0


def _drain(plan: ReplicaPlan, signum: int) -> None:
    """``/ready`` 503, serve on for ``--drain-seconds`` (none after Ctrl-C), then delete the server application:
    Ray stops routing to its replicas and lets each finish the requests it holds (up to the graceful timeout)."""
    seconds = plan.drain_seconds if signum == signal.SIGTERM else 0.0
    serve.get_app_handle(READY_APP).drain.remote().result()
    log.info("draining: /ready answers 503%s", f"; stopping in {seconds:g} s" if seconds else "")
    time.sleep(seconds)
    started = time.monotonic()
    serve.delete(APP)
    log.info("replicas stopped after %.1f s", time.monotonic() - started)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
