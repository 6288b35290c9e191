"""How a model is loaded: one options object for every command, the server, Ray actors, eval and training.

Each knob is declared once here, with its one default, its command-line flag and its environment
variable (``PPLX_EMBED_<NAME>``). Precedence: explicit value > flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pplx_embed.checks.texts import TRUNCATIONS, check_truncation
from pplx_embed.errors import InputError

ENV_PREFIX = "PPLX_EMBED_"
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 256
BACKENDS = ("auto", "torch", "openvino", "onnx", "openvino-int8", "onnx-int8")  # -int8: int8 compute, lossy
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
ADAPTER_CONFIG = "adapter_config.json"  # what marks a peft (LoRA) adapter directory


def is_adapter(path: str | os.PathLike) -> bool:
    """True for a peft (LoRA) adapter directory."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def check_adapter(path: str | os.PathLike) -> Path:
    """``path`` as an adapter directory, else an :class:`InputError` saying what is wrong."""
    if not is_adapter(path):
        raise InputError(f"{path} is not a LoRA adapter directory (no {ADAPTER_CONFIG}); "
                         "write one with `pplx-embed finetune --lora R`")
    return Path(path).expanduser().resolve()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


@dataclass(frozen=True)
class EmbedderOptions:
    """Everything that decides how a model is loaded and run (not what is asked of it).

    ``model``: alias, checkpoint directory or hub id (``None``: the default model).
    ``backend``: ``auto`` picks per machine; explicit names always win.
    ``dtype`` / ``device``: ``None`` lets the backend choose.
    ``max_batch_tokens`` / ``max_batch_size``: the engine's padded-token and sequence budget per batch.
    ``truncation``: ``None`` refuses over-long texts; ``right``/``left`` cut them.
    ``adapter``: a LoRA adapter directory run over ``model`` (torch backend); ``model="BASE+ADAPTER"`` says
    the same in one name (``serve --model NAME=BASE+ADAPTER``).
    """

    model: str | None = None
    backend: str = "auto"
    dtype: str | None = None
    device: str | None = None
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    truncation: str | None = None
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.model and "+" in self.model:  # BASE+ADAPTER names its own adapter (over any --adapter)
            base, _, adapter = self.model.rpartition("+")
            if base and is_adapter(adapter):
                object.__setattr__(self, "model", base)
                object.__setattr__(self, "adapter", adapter)
        if self.adapter is not None:
            check_adapter(self.adapter)
            if self.backend not in ("auto", "torch"):
                raise InputError(f"a LoRA adapter runs on the torch backend, not {self.backend!r}; "
                                 "leave --backend unset or pass torch")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        check_truncation(self.truncation)
        for name in ("max_batch_tokens", "max_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")

    # ---- sources -----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> EmbedderOptions:
        """Defaults overridden by ``PPLX_EMBED_*`` variables, then by ``overrides`` that are not ``None``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type in ("int", int):
                if not raw.strip().isdigit():
                    raise InputError(f"{ENV_PREFIX}{f.name.upper()} must be a positive integer, got {raw!r}")
                values[f.name] = int(raw)
            else:
                values[f.name] = raw.strip()
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"unknown option {unknown[0]!r}; options are {', '.join(f.name for f in fields(cls))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, model: bool = True) -> None:
        """``--model --backend --dtype --device --max-batch-tokens --max-batch-size --truncation``.

        Flags default to ``None`` so :meth:`from_args` can tell "not given" from a value and let
        the environment fill the gap. ``model=False`` leaves ``--model`` to the command.
        """
        group = parser.add_argument_group("model loading (flags > PPLX_EMBED_* environment > defaults)")
        if model:
            group.add_argument("--model", "-m", default=None,
                               help="alias (pplx-embed-v1-0.6b, minilm, ...), checkpoint directory or hub id; "
                                    "default: $PPLX_EMBED_MODEL, else pplx-embed-v1-0.6b if cached, else minilm")
        group.add_argument("--backend", default=None, choices=BACKENDS,
                           help="auto (default: the fastest configuration within cosine 0.9995 of torch fp32 on "
                                "this machine, measured once and cached), torch, openvino, onnx; openvino-int8 / "
                                "onnx-int8 compute in int8 (lossy opt-in; not the output --quantization)")
        group.add_argument("--dtype", default=None, choices=DTYPES,
                           help="compute dtype (default: the backend's choice for the device)")
        group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        group.add_argument("--max-batch-tokens", type=_positive_int, default=None,
                           help=f"padded tokens per engine batch (default {DEFAULT_MAX_BATCH_TOKENS})")
        group.add_argument("--max-batch-size", type=_positive_int, default=None,
                           help=f"sequences per engine batch (default {DEFAULT_MAX_BATCH_SIZE})")
        group.add_argument("--truncation", default=None, choices=TRUNCATIONS,
                           help="cut over-long texts from the right or left (default: refuse them)")
        group.add_argument("--adapter", default=None,
                           help="LoRA adapter directory (finetune --lora) run over the model; torch backend")

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: dict[str, str] | None = None) -> EmbedderOptions:
        """The options of a parsed command line (flags added by :meth:`add_arguments`), env filling gaps."""
        return cls.from_env(environ, **{f.name: getattr(args, f.name, None) for f in fields(cls)})

    def replace(self, **changes: Any) -> EmbedderOptions:
        return dataclasses.replace(self, **changes)


def cache_dir(name: str, environ: dict[str, str] | None = None) -> Path:
    """Where pplx-embed caches ``name`` (ONNX exports, eval embeddings): ``$PPLX_EMBED_CACHE/<name>``,
    else ``~/.cache/pplx-embed/<name>``; read when asked, not at import."""
    base = (os.environ if environ is None else environ).get(ENV_PREFIX + "CACHE")
    return Path(base or Path.home() / ".cache" / "pplx-embed").expanduser() / name
