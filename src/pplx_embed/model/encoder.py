"""The bidirectional Qwen3 encoder of pplx-embed, built on ``transformers``' Qwen3.

pplx-embed checkpoints are plain ``Qwen3Model`` weights whose attention is not causal: every token
sees every other non-padding token. We register the checkpoint's ``model_type``
(``bidirectional_pplx_qwen3``) with ``transformers`` so it loads without ``trust_remote_code``, and
switch the causal mask off in two places: the mask builder (``config.is_causal = False`` makes
``transformers`` build a padding-only mask) and each attention module (SDPA / flash kernels read
``module.is_causal`` when no mask is needed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, Qwen3Config, Qwen3Model
from transformers.utils import logging as hf_logging

from pplx_embed.model.checkpoint import PPLX_MODEL_TYPE, is_pplx_config


class PPLXQwen3Config(Qwen3Config):
    """Qwen3 config with bidirectional attention (``model_type: bidirectional_pplx_qwen3``)."""

    model_type = PPLX_MODEL_TYPE

    def __init__(self, use_bidirectional_attention: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.use_bidirectional_attention = use_bidirectional_attention
        self.is_causal = not use_bidirectional_attention


class PPLXQwen3Model(Qwen3Model):
    """``Qwen3Model`` with the causal mask disabled (padding is still masked)."""

    config_class = PPLXQwen3Config

    def __init__(self, config: Qwen3Config):
        bidirectional = getattr(config, "use_bidirectional_attention", True)
        config.use_bidirectional_attention = bidirectional
        config.is_causal = not bidirectional
        super().__init__(config)
        for layer in self.layers:
            layer.self_attn.is_causal = not bidirectional


AutoConfig.register(PPLX_MODEL_TYPE, PPLXQwen3Config, exist_ok=True)
AutoModel.register(PPLXQwen3Config, PPLXQwen3Model, exist_ok=True)


def load_transformer(path: Path, config: dict, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """Load the token encoder of a checkpoint directory for inference.

    pplx-embed / bidirectional Qwen3 checkpoints load as :class:`PPLXQwen3Model`; any other encoder
    (BERT family, sentence-transformers checkpoints) through ``AutoModel`` without remote code.
    """
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load is noise in CLI output
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
    if is_pplx_config(config):
        cfg = PPLXQwen3Config.from_pretrained(path, use_bidirectional_attention=True)
        model = PPLXQwen3Model.from_pretrained(path, config=cfg, **kwargs)
    else:
        model = AutoModel.from_pretrained(path, trust_remote_code=False, **kwargs)
    return model.to(device).eval()
