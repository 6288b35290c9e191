"""An independent Qwen3 encoder written from plain torch ops, reading safetensors directly.

It shares no code with ``pplx_embed`` or ``transformers``' Qwen3: RMSNorm, RoPE, grouped-query
attention with per-head q/k RMSNorm, SwiGLU MLP. Computed in float64 so it is the yardstick.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        for key, value in load_file(directory / name).items():
            weights[key.removeprefix("model.")] = value.double()
    return weights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding on ``[heads, tokens, head_dim]`` (rotate-half convention)."""
    head_dim, tokens = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(tokens, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    half = head_dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def encode(directory: Path, ids: list[int], causal: bool = False) -> torch.Tensor:
    """Last hidden states ``[tokens, hidden]`` (float64) of one unpadded sequence."""
    cfg = json.loads((directory / "config.json").read_text())
    w = load_weights(directory)
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    heads, kv_heads, head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    x = w["embed_tokens.weight"][torch.tensor(ids)]
    t = len(ids)
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(t, heads, head_dim).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(t, kv_heads, head_dim).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(t, kv_heads, head_dim).transpose(0, 1)
        q = rope(rms_norm(q, w[p + "self_attn.q_norm.weight"], eps), theta)
        k = rope(rms_norm(k, w[p + "self_attn.k_norm.weight"], eps), theta)
        k = k.repeat_interleave(heads // kv_heads, 0)
        v = v.repeat_interleave(heads // kv_heads, 0)
        scores = q @ k.transpose(1, 2) / head_dim**0.5
        if causal:
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        attn = scores.softmax(-1) @ v
        x = x + attn.transpose(0, 1).reshape(t, heads * head_dim) @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return rms_norm(x, w["norm.weight"], eps)


def int8(x: torch.Tensor) -> torch.Tensor:
    """The model card's int8: clamp(round(tanh(x) * 127), -128, 127)."""
    return torch.clamp(torch.round(torch.tanh(x) * 127), -128, 127)


def late_chunks(ids: list[int], states: torch.Tensor, sep_id: int) -> list[torch.Tensor]:
    """The model card's late-chunking rule: split at separator positions, mean each span, empty → 0."""
    out, start = [], 0
    for pos in [p for p, token in enumerate(ids) if token == sep_id] + [len(ids)]:
        span = states[start:pos]
        out.append(span.mean(0) if len(span) else torch.zeros(states.shape[-1], dtype=states.dtype))
        start = pos + 1
    return out
