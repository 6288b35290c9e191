"""``pplx-embed serve``: run the embedding server (options also from ``PPLX_EMBED_SERVE_*`` env vars)."""

from __future__ import annotations

import argparse
import logging
import math
import os

from pplx_embed.errors import InputError
from pplx_embed.options import EmbedderOptions
from pplx_embed.serve.limits import ServeLimits

ENV = "PPLX_EMBED_SERVE_"
FILES_BESIDE_CONNECTIONS = 256  # open files a server needs besides its sockets (models, indexes, libraries)
LIMIT_HELP = {  # ServeLimits' flags
    "max_step_tokens": "tokens per scheduler step at most, shared in turn by the waiting requests (TEI's "
                       "--max-batch-tokens; default: the engine's --max-batch-tokens)",
    "step_seconds": "size steps to take about this long at the measured rate, so a short request waits "
                    "about that (default 0.25 on CPU, off on GPU)",
    "max_batch_requests": "sequences per scheduler step (default: the engine's --max-batch-size)",
    "max_concurrent_requests": "requests per model tokenizing, waiting or running before 429 (default 128)",
    "max_queue_tokens": "tokens per model waiting for the worker before 429 (default 1000000)",
    "max_client_batch_size": "texts (or documents) per request (default 512)",
    "max_tokens_per_request": "tokens per request (default 120000, as the Perplexity API)",
    "max_chunks": "chunks per contextual request (default 16000)",
    "max_tokens_per_document": "tokens per contextual document (default 32768)",
    "payload_limit": "request body bytes (default 16777216)",
    "request_timeout": "seconds before a request is answered 504 and its queued work dropped (default 60)",
    "read_timeout": "seconds to receive a whole request, headers and body, from its first byte, before 408 "
                    "(default 30)",
    "header_timeout": "seconds to receive a request's headers, from its first byte, before 408 (default 10)",
    "idle_timeout": "seconds a connection may stay open without a request (before its first one, between "
                    "keep-alive requests) or without reading its answer (default 5)",
    "max_connections": "open connections at once; the next ones are answered 503 and closed (default 512)",
}


def _env(name: str, default=None):
    return os.environ.get(ENV + name, default)


def _env_list(name: str) -> list[str]:
    """A repeatable option's default from a comma- or space-separated env var (``;`` for splits)."""
    value = _env(name, "")
    sep = ";" if name == "SPLIT" else None
    return [v.strip() for v in (value.split(sep) if sep else value.replace(",", " ").split()) if v.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP embedding server (Perplexity / OpenAI / TEI API)",
                              description=__doc__)
    p.add_argument("--model", "-m", action="append", default=None, metavar="[NAME=]SOURCE",
                   help="model to serve (repeatable): alias, checkpoint directory or hub id, optionally named; "
                        "BASE+ADAPTER serves a LoRA adapter (finetune --lora) over BASE, every adapter of one base "
                        f"sharing its weights in memory; env {ENV}MODEL (comma-separated); default: the default model")
    p.add_argument("--split", action="append", default=None, metavar="ALIAS=MODEL:W,MODEL:W",
                   help=f"traffic-split alias routing requests by weight (repeatable; env {ENV}SPLIT, ';'-separated)")
    p.add_argument("--shadow", action="append", default=None, metavar="PRIMARY=CANDIDATE",
                   help="also embed PRIMARY's requests with CANDIDATE and record agreement in /metrics (repeatable)")
    p.add_argument("--index", action="append", default=None, metavar="NAME=PATH",
                   help="retrieval index to serve at /v1/indexes/NAME (repeatable; env "
                        f"{ENV}INDEX, comma-separated); its model must be one of the --model ones")
    p.add_argument("--reports", default=_env("REPORTS"), metavar="DIR",
                   help="show the reports of `pplx-embed eval --output DIR` on the /ui page")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address (default 127.0.0.1)")
    p.add_argument("--port", default=_env("PORT", "8000"), help="port 0..65535 (default 8000; 0: any free port)")
    p.add_argument("--api-key", action="append", default=None,
                   help=f"accepted Bearer key, allowed every model (repeatable; env {ENV}API_KEY)")
    p.add_argument("--api-keys-file", default=_env("API_KEYS_FILE"),
                   help='JSON file {"key": ["model", ...] | "*"} of accepted keys')
    limits = p.add_argument_group(f"limits (env {ENV}<NAME>, e.g. {ENV}MAX_CONCURRENT_REQUESTS)")
    for name, text in LIMIT_HELP.items():
        limits.add_argument("--" + name.replace("_", "-"), default=_env(name.upper()), metavar="N", help=text)
    p.add_argument("--graceful-timeout", default=_env("GRACEFUL_TIMEOUT", "30"),
                   help="seconds to finish in-flight requests on shutdown (default 30)")
    p.add_argument("--drain-seconds", default=_env("DRAIN_SECONDS", "0"),
                   help="on SIGTERM, answer /ready 503 (still serving) this long before shutting down, so that "
                        "load balancers stop sending requests first (default 0)")
    _register_replicas(p)
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=("debug", "info", "warning", "error"))
    EmbedderOptions.add_arguments(p, model=False)
    p.set_defaults(func=cmd_serve)


def _register_replicas(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(f"replicas (Ray Serve; env {ENV}<NAME>; any of these serves through Ray)")
    group.add_argument("--replicas", default=_env("REPLICAS"), metavar="N",
                       help="serve with N Ray Serve replicas of the same app (the initial count with --autoscale)")
    group.add_argument("--ray-address", default=_env("RAY_ADDRESS"), metavar="ADDR",
                       help="join this Ray cluster (e.g. head:6379) instead of starting Ray on this machine")
    group.add_argument("--autoscale", default=_env("AUTOSCALE"), metavar="MIN:MAX",
                       help="scale replicas between MIN and MAX on ongoing requests per replica")
    group.add_argument("--target-ongoing-requests", default=_env("TARGET_ONGOING_REQUESTS"), metavar="N",
                       help="autoscaling keeps about this many requests in flight per replica (default 8)")
    group.add_argument("--upscale-delay", default=_env("UPSCALE_DELAY"), metavar="S",
                       help="seconds of sustained load before adding replicas (default 30)")
    group.add_argument("--downscale-delay", default=_env("DOWNSCALE_DELAY"), metavar="S",
                       help="seconds of low load before removing replicas (default 600)")
    group.add_argument("--replica-cpus", default=_env("REPLICA_CPUS"), metavar="N",
                       help="CPUs (and engine threads) per replica (default: the cluster's CPUs / most replicas)")
    group.add_argument("--replica-gpus", default=_env("REPLICA_GPUS"), metavar="N",
                       help="GPUs per replica, fractions share one (default 1 with --device cuda, else 0)")


def _number(flag: str, text: str, kind: type, low: float, high: float | None = None):
    """``text`` as a ``kind`` in ``[low, high]``, else a one-line :class:`InputError`."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"--{flag} must be a{'n integer' if kind is int else ' number'} {bound}, got {text!r}")
    return value


def build_config(args: argparse.Namespace):
    """A :class:`~pplx_embed.serve.app.ServeConfig` from the parsed options (``InputError`` on bad ones)."""
    args.port = _number("port", args.port, int, 0, 65535)
    args.graceful_timeout = _number("graceful-timeout", args.graceful_timeout, float, 0)
    args.drain_seconds = _number("drain-seconds", args.drain_seconds, float, 0)
    limits = {}
    for name in LIMIT_HELP:
        if (text := getattr(args, name)) is not None:
            kind = float if name.endswith(("timeout", "seconds")) else int
            limits[name] = _number(name.replace("_", "-"), text, kind, 1e-3 if kind is float else 1)

    from pplx_embed.serve.app import ServeConfig
    from pplx_embed.serve.auth import KeyRing
    from pplx_embed.serve.indexes import parse_index_spec
    from pplx_embed.serve.registry import parse_model_spec, parse_shadow, parse_split
    from pplx_embed.serve.ui import check_reports

    models = args.model or _env_list("MODEL") or [None]
    specs = [parse_model_spec(m) if m else (None, None) for m in models]
    splits = dict(parse_split(s) for s in (args.split or _env_list("SPLIT")))
    shadows = dict(parse_shadow(s) for s in (args.shadow or _env_list("SHADOW")))
    indexes = [parse_index_spec(s) for s in (args.index or _env_list("INDEX"))]
    names = [name or source for name, source in specs if name or source]
    for target in [m for targets in splits.values() for m, _ in targets] + [*shadows, *shadows.values()]:
        if target not in names:
            raise InputError(f"{target!r} is used by --split/--shadow but no --model is served so; "
                             f"serve it as --model {target}=SOURCE")
    keys = KeyRing.from_options(args.api_key or _env_list("API_KEY"), args.api_keys_file)
    return ServeConfig(models=specs, splits=splits, shadows=shadows, indexes=indexes, keys=keys,
                       reports=check_reports(args.reports), limits=ServeLimits(**limits),
                       options=EmbedderOptions.from_args(args))


def _allow_files(connections: int) -> None:
    """Raise the soft limit of open files (up to the hard one) so that ``connections`` sockets fit beside the
    model and index files; warn when even the hard limit is lower."""
    import resource

    want = connections + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    allowed = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (allowed, hard))
    if allowed < want:
        logging.getLogger("pplx_embed.serve").warning(
            "the open-file limit (%d) leaves room for fewer than --max-connections %d connections; raise it "
            "(ulimit -n) or lower --max-connections", hard, connections)


def build_plan(args: argparse.Namespace, config):
    """The :class:`~pplx_embed.serve.replicas.ReplicaPlan` of the replica flags, or None (one process)."""
    flags = ("replicas", "ray_address", "autoscale", "target_ongoing_requests", "upscale_delay", "downscale_delay",
             "replica_cpus", "replica_gpus")
    if all(getattr(args, name) is None for name in flags):
        return None
    from pplx_embed.serve.replicas import ReplicaPlan

    plan = {}
    if args.autoscale is not None:
        low, colon, high = args.autoscale.partition(":")
        if not colon:
            raise InputError(f"--autoscale must be MIN:MAX, got {args.autoscale!r}")
        plan["autoscale"] = (_number("autoscale", low, int, 1), _number("autoscale", high, int, 1))
    replicas = args.replicas if args.replicas is not None else str(plan["autoscale"][0]) if args.autoscale else "1"
    plan["replicas"] = _number("replicas", replicas, int, 1)
    for name, kind, low in (("target_ongoing_requests", float, 1e-3), ("upscale_delay", float, 0),
                            ("downscale_delay", float, 0), ("replica_cpus", float, 1e-3), ("replica_gpus", float, 0)):
        if (text := getattr(args, name)) is not None:
            plan[name] = _number(name.replace("_", "-"), text, kind, low)
    if "replica_gpus" not in plan and str(config.options.device or "").startswith("cuda"):
        plan["replica_gpus"] = 1.0
    return ReplicaPlan(**plan, address=args.ray_address or None, host=args.host, port=args.port,
                       drain_seconds=args.drain_seconds, graceful_timeout=args.graceful_timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    from pplx_embed.serve.app import create_app
    from pplx_embed.serve.http import uvicorn_config
    from pplx_embed.serve.readiness import DrainingServer

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    config = build_config(args)
    plan = build_plan(args, config)
    if plan is not None:
        from pplx_embed.serve.replicas import run

        return run(config, plan)
    failure: list[BaseException] = []
    server: DrainingServer | None = None

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    config.on_load_error = on_load_error
    _allow_files(config.limits.max_connections)
    app = create_app(config)
    server = DrainingServer(uvicorn_config(app, config.limits, host=args.host, port=args.port,
                                           log_level=args.log_level, timeout_graceful_shutdown=args.graceful_timeout),
                            app.state.service.readiness, args.drain_seconds)
    server.run()
    if failure:
        raise InputError(f"could not load the models and indexes: {failure[0]}")
    return 0
