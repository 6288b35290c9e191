"""``pplx-embed serve``: run the embedding server (options also from ``PPLX_EMBED_SERVE_*`` env vars)."""

from __future__ import annotations

import argparse
import logging
import os

ENV = "PPLX_EMBED_SERVE_"


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
                        f"env {ENV}MODEL (comma-separated); default: the default model")
    p.add_argument("--split", action="append", default=None, metavar="ALIAS=MODEL:W,MODEL:W",
                   help=f"traffic-split alias routing requests by weight (repeatable; env {ENV}SPLIT, ';'-separated)")
    p.add_argument("--shadow", action="append", default=None, metavar="PRIMARY=CANDIDATE",
                   help="also embed PRIMARY's requests with CANDIDATE and record agreement in /metrics (repeatable)")
    p.add_argument("--index", action="append", default=None, metavar="NAME=PATH",
                   help="retrieval index to serve at /v1/indexes/NAME (repeatable; env "
                        f"{ENV}INDEX, comma-separated); its model must be one of the --model ones")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(_env("PORT", 8000)), help="port (default 8000)")
    p.add_argument("--api-key", action="append", default=None,
                   help=f"accepted Bearer key, allowed every model (repeatable; env {ENV}API_KEY)")
    p.add_argument("--api-keys-file", default=_env("API_KEYS_FILE"),
                   help='JSON file {"key": ["model", ...] | "*"} of accepted keys')
    p.add_argument("--device", default=_env("DEVICE"), help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=_env("DTYPE"), help="float32, bfloat16, float16 (default: bf16 on GPU)")
    p.add_argument("--max-batch-tokens", type=int, default=int(_env("MAX_BATCH_TOKENS", 16384)),
                   help="padded tokens per engine batch (default 16384)")
    p.add_argument("--max-queue", type=int, default=int(_env("MAX_QUEUE", 128)),
                   help="requests per model waiting or running before answering 429 (default 128)")
    p.add_argument("--request-timeout", type=float, default=float(_env("REQUEST_TIMEOUT", 60)),
                   help="seconds before a request is answered 504 and its queued work dropped (default 60)")
    p.add_argument("--max-body-bytes", type=int, default=int(_env("MAX_BODY_BYTES", 16 * 2**20)),
                   help="largest request body accepted (default 16 MiB)")
    p.add_argument("--max-tokens-per-request", type=int, default=int(_env("MAX_TOKENS_PER_REQUEST", 120_000)),
                   help="token limit of one request (default 120000, as the Perplexity API)")
    p.add_argument("--graceful-timeout", type=float, default=float(_env("GRACEFUL_TIMEOUT", 30)),
                   help="seconds to finish in-flight requests on shutdown (default 30)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)


def build_config(args: argparse.Namespace):
    """A :class:`~pplx_embed.serve.app.ServeConfig` from the parsed options (``ValueError`` on bad ones)."""
    from pplx_embed.serve.app import ServeConfig
    from pplx_embed.serve.auth import KeyRing
    from pplx_embed.serve.indexes import parse_index_spec
    from pplx_embed.serve.limits import Limits
    from pplx_embed.serve.registry import parse_model_spec, parse_shadow, parse_split

    models = args.model or _env_list("MODEL") or [None]
    specs = [parse_model_spec(m) if m else (None, None) for m in models]
    splits = dict(parse_split(s) for s in (args.split or _env_list("SPLIT")))
    shadows = dict(parse_shadow(s) for s in (args.shadow or _env_list("SHADOW")))
    indexes = [parse_index_spec(s) for s in (args.index or _env_list("INDEX"))]
    names = [name for name, _ in specs if name]
    for target in [m for targets in splits.values() for m, _ in targets] + [*shadows, *shadows.values()]:
        if target not in names:
            raise ValueError(f"{target!r} is used by --split/--shadow but no --model is named so; "
                             f"serve it as --model {target}=SOURCE")
    for name, value in (("max-queue", args.max_queue), ("max-body-bytes", args.max_body_bytes),
                        ("max-batch-tokens", args.max_batch_tokens)):
        if value < 1:
            raise ValueError(f"--{name} must be positive")
    if args.request_timeout <= 0:
        raise ValueError("--request-timeout must be positive")
    keys = KeyRing.from_options(args.api_key or _env_list("API_KEY"), args.api_keys_file)
    return ServeConfig(models=specs, splits=splits, shadows=shadows, indexes=indexes, keys=keys,
                       limits=Limits(max_tokens_per_request=args.max_tokens_per_request),
                       max_queue=args.max_queue, request_timeout=args.request_timeout,
                       max_body_bytes=args.max_body_bytes, device=args.device, dtype=args.dtype,
                       max_batch_tokens=args.max_batch_tokens)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pplx_embed.serve.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    config = build_config(args)
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    config.on_load_error = on_load_error
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=args.host, port=args.port,
                                           log_level=args.log_level,
                                           timeout_graceful_shutdown=int(args.graceful_timeout)))
    server.run()
    if failure:
        raise ValueError(f"could not load the models and indexes: {failure[0]}")
    return 0
