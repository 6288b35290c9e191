"""A trainable view of a runtime checkpoint: the same model, tokenizer and pooling as ``Embedder``,
with gradients, and saving back to a directory ``Embedder`` loads.

Training embeds exactly what inference embeds: texts are tokenized with the checkpoint's own
tokenizer (its special tokens included), documents are late-chunked with the core's
``join_chunks`` (one span per chunk), and spans are pooled with the core's differentiable
``pool_spans``. Evaluation uses the wrapped :class:`~pplx_embed.Embedder` itself, whose engine runs
the very module being trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pplx_embed.atomic import atomic_path
from pplx_embed.embedder import Embedder
from pplx_embed.errors import InputError
from pplx_embed.model.checkpoint import PPLX_MODEL_TYPE
from pplx_embed.model.late_chunking import join_chunks
from pplx_embed.model.pooling import Sequence, pool_spans
from pplx_embed.options import EmbedderOptions

# sentence-transformers files copied next to the weights so the runtime reads pooling/normalization.
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


class TrainableEncoder:
    """Wraps an :class:`Embedder` for training: ``sequences`` → differentiable pooled embeddings."""

    def __init__(self, options: EmbedderOptions, max_length: int = 256, gradient_checkpointing: bool = False,
                 lora: int | None = None, adapter: str | Path | None = None):
        """``lora``: train a new LoRA adapter of that rank instead of the weights; ``adapter``: continue
        training the LoRA adapter saved there (resume)."""
        self.embedder = Embedder(options=options.replace(backend="torch", dtype="float32"))  # gradients need both
        self.model: torch.nn.Module = self.embedder.model
        self.peft = None  # the PeftModel of a LoRA run; its layers live inside ``model``
        if adapter is not None:
            from pplx_embed.model.adapter import load_trainable

            self.peft = load_trainable(self.model, adapter)
        elif lora:
            from pplx_embed.model.adapter import attach_lora

            self.peft = attach_lora(self.model, lora, base_name=options.model)
        self.tokenizer = self.embedder.tokenizer
        self.device = self.embedder.device
        self.pooling = self.embedder.checkpoint.pooling
        self.max_length = min(max_length, self.embedder.max_length)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    # ---- inputs ------------------------------------------------------------------------------
    def text_sequences(self, texts: list[str], max_length: int | None = None) -> list[Sequence]:
        """One sequence per text, right-truncated to ``max_length`` tokens (special tokens kept)."""
        limit = min(max_length or self.max_length, self.max_length)
        enc = self.tokenizer(list(texts), truncation=True, max_length=limit, add_special_tokens=True)
        return [Sequence(ids) for ids in enc["input_ids"]]

    def document_sequences(self, documents: list[list[str]]) -> list[Sequence]:
        """One late-chunking sequence per document (chunks joined by the separator, one span each).

        Chunks are truncated evenly so the whole document fits ``max_length`` tokens.
        """
        prefix, suffix = self.embedder.tokens.prefix, self.embedder.tokens.suffix
        out = []
        for doc in documents:
            if not doc:
                raise InputError("a document needs at least one chunk")
            room = self.max_length - len(prefix) - len(suffix) - (len(doc) - 1)
            per_chunk = room // len(doc)
            if per_chunk < 1:
                raise InputError(f"a document of {len(doc)} chunks does not fit {self.max_length} tokens")
            bodies = self.tokenizer(list(doc), add_special_tokens=False)["input_ids"]
            out.append(join_chunks([ids[:per_chunk] for ids in bodies], self.embedder.tokens.sep_id, prefix, suffix))
        return out

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, sequences: list[Sequence], module: torch.nn.Module | None = None) -> torch.Tensor:
        """Pooled float32 embeddings ``[total spans, dim]`` of right-padded ``sequences`` (with grad).

        ``module`` runs the forward instead of ``model`` (e.g. its ``DistributedDataParallel`` wrapper).
        """
        width = max(len(s.ids) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
            mask[row, : len(seq.ids)] = 1
        hidden = (module or self.model)(input_ids=ids.to(self.device),
                                        attention_mask=mask.to(self.device)).last_hidden_state
        return pool_spans(hidden, [s.spans for s in sequences], self.pooling)

    # ---- output ------------------------------------------------------------------------------
    def save(self, directory: str | Path, info: dict | None = None, state: dict | None = None,
             weights: dict | None = None) -> Path:
        """Write weights, tokenizer and sentence-transformers files; ``Embedder(directory)`` loads it
        (a LoRA run writes its adapter instead: ``Embedder(base, adapter=directory)``).

        ``info`` goes to ``training.json``, ``state`` (optimizer, position, RNG) to ``trainer_state.pt``;
        ``weights`` (a full state dict, e.g. gathered from FSDP shards) replaces the model's own.
        Written to a temporary sibling and renamed, so ``directory`` is always complete or absent.
        """
        directory = Path(directory)
        with atomic_path(directory, directory=True) as tmp:
            if self.peft is not None:  # a LoRA run writes its adapter: Embedder(base, adapter=directory)
                self.peft.save_pretrained(tmp)
            else:
                save_encoder(self.model, self.tokenizer, tmp, source=self.embedder.checkpoint.path, weights=weights)
            if info:
                (tmp / "training.json").write_text(json.dumps(info, indent=2))
            if state:
                torch.save(state, tmp / "trainer_state.pt")
            shutil.rmtree(directory, ignore_errors=True)  # the previous save goes once this one is complete
        return directory


def save_encoder(model: torch.nn.Module, tokenizer, directory: Path, source: Path | None = None,
                 weights: dict | None = None) -> None:
    """Save a token encoder in the runtime's on-disk layout (safetensors + tokenizer + ST modules).

    sentence-transformers files (pooling, normalization, max length) are copied from ``source``;
    pplx (bidirectional Qwen3) models keep ``model_type: bidirectional_pplx_qwen3``.
    """
    model.save_pretrained(directory, state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    if config.get("use_bidirectional_attention"):
        config["model_type"] = PPLX_MODEL_TYPE
        config.pop("is_causal", None)
        config_file.write_text(json.dumps(config, indent=2))
    if source is None:
        return
    for name in ST_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)
    if (source / "modules.json").is_file():
        for module in json.loads((source / "modules.json").read_text()):
            sub = module.get("path", "")
            if sub and (source / sub).is_dir():
                shutil.copytree(source / sub, directory / sub, dirs_exist_ok=True)
