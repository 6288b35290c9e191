"""Write randomly initialised checkpoints in the real pplx-embed on-disk format.

For tests, benchmarks and training from scratch where no pretrained weights are at hand: the
same ``config.json`` (``bidirectional_pplx_qwen3``), safetensors weights, Qwen3 tokenizer files and
sentence-transformers module files as the published checkpoints, with any shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pplx_embed.errors import InputError
from pplx_embed.model.checkpoint import PPLX_MODEL_TYPE
from pplx_embed.model.encoder import PPLXQwen3Config, PPLXQwen3Model
from pplx_embed.model.tokenizer import SEP_TOKEN_ID, build_qwen3_tokenizer

# Shapes of the published models (SPEC.md) and a tiny one for tests.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128),
}


def pplx_config(preset: str = "tiny", **overrides) -> PPLXQwen3Config:
    """A pplx-embed config of the given shape (vocabulary and RoPE as the published models)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(vocab_size=151669, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=SEP_TOKEN_ID, eos_token_id=SEP_TOKEN_ID,
                  pad_token_id=SEP_TOKEN_ID, architectures=["PPLXQwen3Model"], use_bidirectional_attention=True)
    fields.update(PRESETS[preset])
    fields.update(overrides)
    return PPLXQwen3Config(**fields)


def write_sentence_transformers_files(directory: Path, dimension: int, max_length: int) -> None:
    """``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json`` (mean pooling)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dimension, "pooling_mode_mean_tokens": True}, indent=2))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}, indent=2))


def write_random_checkpoint(directory: str | Path, preset: str = "tiny", seed: int = 0,
                            dtype: torch.dtype = torch.float32, tokenizer=None, **overrides) -> Path:
    """Write a random-init pplx-embed checkpoint (weights, config, tokenizer, ST modules) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = pplx_config(preset, **overrides)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in ``dtype``: a 4B model never exists in float32 (16 GB)
    try:
        model = PPLXQwen3Model(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(directory, safe_serialization=True)
    saved = json.loads((directory / "config.json").read_text())
    saved["model_type"] = PPLX_MODEL_TYPE
    saved.pop("is_causal", None)  # derived from use_bidirectional_attention, as in the published configs
    (directory / "config.json").write_text(json.dumps(saved, indent=2))
    (tokenizer or build_qwen3_tokenizer(config.max_position_embeddings)).save_pretrained(directory)
    write_sentence_transformers_files(directory, config.hidden_size, config.max_position_embeddings)
    return directory
