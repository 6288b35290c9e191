"""Stage configurations: dataclasses read from YAML or JSON files (unknown keys are errors)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pplx_embed.errors import InputError

STAGES = ("pairs", "contextual", "triplets")
# finetune's merge toward the start, slerp(start, fine-tune, T) (docs/training.md, "The default recipe"): "auto" tries
# MERGE_GRID from the largest T and keeps the first whose every --check set loses at most FORGET_LIMIT points;
# without check sets it merges at MERGE_START (measured)
MERGE_START = 0.5
MERGE_GRID = (0.7, 0.5, 0.3, 0.2, 0.1)
FORGET_LIMIT = 0.5


PARALLEL_MODES = ("ddp", "fsdp")  # under torchrun: replicated weights, or sharded weights / gradients / optimizer state


def check_parallel(mode: str) -> None:
    if mode not in PARALLEL_MODES:
        raise InputError(f"unknown parallel mode {mode!r}; choose {' or '.join(PARALLEL_MODES)}")


@dataclass
class LossConfig:
    temperature: float = 0.05
    false_negative_margin: float | None = 0.1  # drop in-batch negatives scoring > positive + margin
    duplicate_threshold: float | None = 0.98  # drop in-batch negatives this similar (cosine) to the positive
    mrl_dims: list[int] | None = None  # nested Matryoshka dims trained besides the full dim, e.g. [128, 256]
    quantizations: list[str] = field(default_factory=lambda: ["float"])  # QAT views: float, int8, binary
    contextual_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # in-batch, in-sequence, document


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0


@dataclass
class PhaseConfig:
    """One curriculum phase: a data file, optionally restricted to some languages, for some epochs."""

    data: str
    name: str = ""
    langs: list[str] | None = None  # keep examples whose "lang" (or query_lang/positive_lang) is listed
    cross_lingual: bool | None = None  # True: only query_lang != positive_lang; False: only equal
    epochs: int = 1
    max_examples: int | None = None


@dataclass
class EvalConfig:
    """Retrieval evaluation on a BEIR directory during training (early stopping, best checkpoint)."""

    data: str
    metric: str = "ndcg@10"
    every_steps: int | None = None  # also after each epoch
    patience: int | None = 3  # evaluations without improvement before stopping; None = never stop early
    max_queries: int | None = None
    max_corpus: int | None = None  # corpus subset: all relevant rows + random others up to this size
    seed: int = 0
    views: list[str] = field(default_factory=lambda: ["float"])  # also scored, e.g. int8, binary, float@256
    before: bool = True  # also evaluate the starting model (the baseline of early stopping)


@dataclass
class MiningConfig:
    """Hard-negative mining for the triplet stage, with the current model."""

    corpus: str | None = None  # JSONL/text of candidate texts; default: all positives of the training data
    num_negatives: int = 1
    top_k: int = 30
    duplicate_threshold: float = 0.95  # skip candidates this similar (cosine) to the positive
    max_score_ratio: float | None = 1.0  # skip candidates scoring above ratio × the positive's score


@dataclass
class StageConfig:
    stage: str
    model: str
    output: str
    phases: list[PhaseConfig]
    batch_size: int = 32  # per process; the loss sees batch_size × world size (cross-device gather)
    micro_batch: int | None = None  # gradient caching: forward/backward in pieces of this size
    max_length: int = 256
    query_max_length: int = 64
    seed: int = 0
    device: str | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig | None = None
    mining: MiningConfig | None = None
    log_every: int = 10
    save_every: int | None = None  # also at each epoch end
    max_steps: int | None = None
    gradient_checkpointing: bool = False
    bf16: bool = False  # bf16 autocast (CUDA, or CPUs with native bf16: AMX / avx512_bf16); losses stay fp32
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated weights) or "fsdp" (sharded, for large models)
    lora: int | None = None  # train a LoRA adapter of this rank (peft) instead of the weights; saves the adapter

    def __post_init__(self) -> None:
        check_parallel(self.parallel)
        if self.lora is not None and (not isinstance(self.lora, int) or isinstance(self.lora, bool) or self.lora < 1):
            raise InputError(f"lora must be a positive rank, not {self.lora!r}")
        if self.stage not in STAGES:
            raise InputError(f"unknown stage {self.stage!r}; choose one of {', '.join(STAGES)}")
        if not self.phases:
            raise InputError("a stage needs at least one phase (training data)")
        if self.batch_size < 2:
            raise InputError("batch_size must be at least 2 (in-batch negatives)")
        if self.optim.optimizer not in ("adamw", "sgd"):
            raise InputError(f"unknown optimizer {self.optim.optimizer!r}; choose adamw or sgd")
        for q in self.loss.quantizations:
            if q not in ("float", "int8", "binary"):
                raise InputError(f"unknown training quantization {q!r}; choose float, int8 or binary")


@dataclass
class DiffusionConfig:
    model: str  # causal Qwen3 checkpoint directory (Qwen3ForCausalLM), or "random:<preset>" (tiny, 0.6b, 4b)
    output: str
    data: str  # text file (one document per line) or JSONL with a "text" field
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 100
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    min_mask_ratio: float = 0.001  # mask ratio t ~ U(min, 1) per sequence
    mask_token: str = "<|fim_pad|>"  # an unused Qwen3 special token (id 151662) stands for [MASK]
    seed: int = 0
    device: str | None = None
    log_every: int = 10
    save_every: int | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False
    preset_overrides: dict = field(default_factory=dict)  # shape overrides for "random:<preset>"
    parallel: str = "ddp"  # under torchrun: "ddp" or "fsdp" (sharded weights, gradients and optimizer state)

    def __post_init__(self) -> None:
        check_parallel(self.parallel)


def _build(cls, data: typing.Any, where: str):
    """Instantiate dataclass ``cls`` from plain data, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        target = hint if dataclasses.is_dataclass(hint) else (inner[0] if inner else None)
        args = typing.get_args(hint)
        item = next((typing.get_args(a)[0] for a in (hint, *args) if typing.get_origin(a) is list
                     and typing.get_args(a) and dataclasses.is_dataclass(typing.get_args(a)[0])), None)
        if item is not None and isinstance(value, list):
            kwargs[key] = [_build(item, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        elif target is not None and value is not None:
            kwargs[key] = _build(target, value, f"{where}.{key}")
        else:
            kwargs[key] = value
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**kwargs)


def read_config_file(path: str | Path) -> dict:
    """A ``.yaml``/``.yml`` or ``.json`` file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / JSONDecodeError: reported with the file name
        raise InputError(f"{path}: cannot parse config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping of keys to values")
    return data


def load_stage_config(path: str | Path, **overrides) -> StageConfig:
    """A contrastive stage config from YAML/JSON; ``overrides`` replace top-level keys (``None`` ignored)."""
    data = read_config_file(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(StageConfig, data, str(path))


def load_diffusion_config(path: str | Path, **overrides) -> DiffusionConfig:
    data = read_config_file(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(DiffusionConfig, data, str(path))


def stage_config(**data) -> StageConfig:
    """A :class:`StageConfig` from keyword data (nested dicts allowed), validated like a file."""
    return _build(StageConfig, data, "config")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
