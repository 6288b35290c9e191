"""Diffusion continued pretraining: a causal Qwen3 LM → a bidirectional pplx-embed encoder.

The start is a ``Qwen3ForCausalLM`` checkpoint (or a random one, ``random:<preset>``). Its
decoder weights move into :class:`~pplx_embed.model.encoder.PPLXQwen3Model` (causal mask off) and
its LM head is kept for training. The objective is masked-diffusion denoising (as in LLaDA-style
masked diffusion LMs): for each sequence draw a mask ratio ``t ~ U(min_mask_ratio, 1)``, replace
each token with the mask token with probability ``t``, predict the original tokens at the masked
positions from full bidirectional context, and weight each token's cross-entropy by ``1/t``::

    loss = Σ_seq Σ_masked CE(token) / t_seq  /  (batch × seq_len)

Mask token: Qwen3 has no ``[MASK]``; we use ``<|fim_pad|>`` (id 151662), a special token that never
occurs in ordinary text. The output (``<output>/last``) is a ``bidirectional_pplx_qwen3`` checkpoint in
the runtime's layout (safetensors, Qwen3 tokenizer, sentence-transformers mean pooling), plus the
trainer state (LM head, optimizer, step) for ``resume``.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pplx_embed.atomic import atomic_path
from pplx_embed.errors import InputError
from pplx_embed.model.encoder import PPLXQwen3Config, PPLXQwen3Model
from pplx_embed.model.synthetic import pplx_config, write_sentence_transformers_files
from pplx_embed.train import distributed as dist
from pplx_embed.train.config import DiffusionConfig, to_dict
from pplx_embed.train.encoder import save_encoder
from pplx_embed.train.schedule import restore, warmup_linear

_NOT_ARCHITECTURE = ("model_type", "architectures", "transformers_version", "is_causal", "use_bidirectional_attention",
                     "auto_map", "dtype", "torch_dtype")


def causal_qwen3(source: str, seed: int = 0, overrides: dict | None = None):
    """``(Qwen3ForCausalLM, tokenizer)`` from a checkpoint directory, or random for ``random:<preset>``."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if source.startswith("random:"):
        from pplx_embed.model.tokenizer import build_qwen3_tokenizer

        shape = pplx_config(source.split(":", 1)[1], **(overrides or {})).to_dict()
        config = Qwen3Config(**{k: v for k, v in shape.items() if k not in _NOT_ARCHITECTURE})
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(config), build_qwen3_tokenizer(config.max_position_embeddings)
    path = Path(source)
    if not (path / "config.json").is_file():
        raise InputError(f"{source} is not a checkpoint directory (no config.json) nor random:<preset>")
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "qwen3":
        raise InputError(f"{source} has model_type {config.get('model_type')!r}; diffusion pretraining starts "
                         "from a causal Qwen3 (Qwen3ForCausalLM) checkpoint")
    return Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


class DiffusionLM(torch.nn.Module):
    """Bidirectional Qwen3 encoder + the causal model's LM head, predicting masked tokens."""

    def __init__(self, causal: torch.nn.Module):
        super().__init__()
        fields = {k: v for k, v in causal.config.to_dict().items() if k not in _NOT_ARCHITECTURE}
        config = PPLXQwen3Config(**fields, architectures=["PPLXQwen3Model"], use_bidirectional_attention=True)
        self.encoder = PPLXQwen3Model(config)
        self.encoder.load_state_dict(causal.model.state_dict())
        self.tied = bool(getattr(causal.config, "tie_word_embeddings", False))
        self.lm_head = None if self.tied else torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head.weight.data.copy_(causal.lm_head.weight.data)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.encoder.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(hidden, weight)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor,
                ratio: torch.Tensor) -> torch.Tensor:
        """Masked-diffusion loss of one batch (see module docstring)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
        ce = F.cross_entropy(self.logits(hidden[masked]).float(), targets[masked], reduction="none")
        weights = (1.0 / ratio)[:, None].expand_as(masked)[masked]
        return (ce * weights).sum() / masked.numel()


def mask_batch(ids: torch.Tensor, mask_id: int, generator: torch.Generator,
               min_ratio: float = 0.001) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noisy ids, masked positions, per-sequence ratio t)``; every sequence has ≥ 1 masked token."""
    batch, length = ids.shape
    ratio = min_ratio + (1 - min_ratio) * torch.rand(batch, generator=generator)
    masked = torch.rand(batch, length, generator=generator) < ratio[:, None]
    forced = torch.randint(0, length, (batch,), generator=generator)
    masked[torch.arange(batch), forced] |= ~masked.any(1)
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked, ratio


def pack_texts(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Tokenize texts, join them with ``<|endoftext|>`` and cut into ``[n, seq_len]`` blocks."""
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [sep])
    blocks = len(stream) // seq_len
    if blocks == 0:
        raise InputError(f"the data has {len(stream)} tokens, fewer than one sequence of {seq_len}")
    return torch.tensor(stream[: blocks * seq_len]).view(blocks, seq_len)


def read_documents(path: str) -> list[str]:
    """Documents from a text file (one per line) or JSONL (``text`` field)."""
    from pplx_embed.train.data import read_jsonl

    if path.endswith((".jsonl", ".json")):
        out = []
        for where, row in read_jsonl(path):
            text = row.get("text") or row.get("positive")
            if not isinstance(text, str):
                raise InputError(f"{where}: expected a 'text' string field")
            out.append(text)
        return out
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training data not found: {path}")
    return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_diffusion_checkpoint(model: DiffusionLM, tokenizer, directory: Path, info: dict, state: dict | None,
                              weights: dict | None = None) -> Path:
    """The encoder as a ``bidirectional_pplx_qwen3`` runtime checkpoint (+ trainer state), written atomically.

    ``weights``: the encoder's full state dict when the live one is sharded (FSDP).
    """
    return _write_encoder_checkpoint(model.encoder, tokenizer, directory, info, state, weights)


def _write_encoder_checkpoint(encoder: torch.nn.Module, tokenizer, directory: Path, info: dict,
                              state: dict | None = None, weights: dict | None = None) -> Path:
    """A Qwen3 token encoder as a runtime checkpoint (mean pooling, ``training.json``), written atomically."""
    import shutil

    with atomic_path(directory, directory=True) as tmp:
        save_encoder(encoder, tokenizer, tmp, weights=weights)
        write_sentence_transformers_files(tmp, encoder.config.hidden_size, encoder.config.max_position_embeddings)
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
        if state is not None:
            torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(directory, ignore_errors=True)  # the previous save goes once this one is complete
    return directory


ATTENTIONS = ("bidirectional", "causal")


def export_encoder(source: str, output: str | Path, attention: str = "bidirectional", seed: int = 0) -> Path:
    """Write the decoder of a causal Qwen3 LM as an embedding checkpoint, without any training.

    ``attention="causal"`` keeps the causal mask: the output is a plain ``qwen3`` (``Qwen3Model``)
    checkpoint, which the runtime and every contrastive stage run causally (each token sees only
    itself and earlier tokens; mean pooling) — the causal arm of the diffusion ablation.
    ``attention="bidirectional"`` writes the same weights as a ``bidirectional_pplx_qwen3``
    checkpoint (mask off, only padding masked), i.e. diffusion pretraining with zero steps — the
    "no diffusion" control. ``source`` is a ``Qwen3ForCausalLM`` directory or ``random:<preset>``.
    """
    if attention not in ATTENTIONS:
        raise InputError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
    causal, tokenizer = causal_qwen3(source, seed)
    if attention == "bidirectional":
        encoder = DiffusionLM(causal).encoder
    else:
        encoder = causal.model
        encoder.config.architectures = ["Qwen3Model"]
    info = {"stage": "export", "attention": attention, "source": source}
    return _write_encoder_checkpoint(encoder, tokenizer, Path(output), info)


def train_diffusion(config: DiffusionConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run diffusion continued pretraining; returns ``{"steps", "first_loss", "last_loss", "output"}``."""
    dist.init_distributed()
    dist.seed_everything(config.seed)
    out = Path(config.output)
    last = out / "last"
    causal, tokenizer = causal_qwen3(config.model, config.seed, config.preset_overrides)
    mask_id = tokenizer.convert_tokens_to_ids(config.mask_token)
    if mask_id is None or mask_id == tokenizer.unk_token_id:
        raise InputError(f"mask token {config.mask_token!r} is not in the tokenizer's vocabulary")
    device = config.device or dist.default_device()
    model = DiffusionLM(causal).to(device)
    del causal
    if config.gradient_checkpointing:
        model.encoder.gradient_checkpointing_enable()
    step, history, state = 0, [], None
    generator = torch.Generator().manual_seed(config.seed + 7919 * dist.rank())
    if resume:
        if not (last / "trainer_state.pt").is_file():
            raise InputError(f"nothing to resume: {last} holds no trainer_state.pt")
        state = torch.load(last / "trainer_state.pt", weights_only=False)
        encoder = PPLXQwen3Model.from_pretrained(last, dtype=torch.float32)
        model.encoder.load_state_dict(encoder.state_dict())
        if model.lm_head is not None:
            model.lm_head.load_state_dict(state["lm_head"])
    runner = dist.wrap(model, device, config.parallel)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_linear(optimizer, config.warmup_steps, config.steps)
    if state is not None:
        dist.load_optimizer_state(model, optimizer, state["optimizer"])
        restore(scheduler, state["scheduler"])
        step, history = state["step"], state["history"]
        generator.set_state(state["generator"])
    blocks = pack_texts(tokenizer, read_documents(config.data), config.seq_len)
    if len(blocks) < config.batch_size * dist.world_size():
        raise InputError(f"the data fills {len(blocks)} sequences of {config.seq_len} tokens, fewer than one "
                         f"batch of {config.batch_size} × {dist.world_size()} process(es)")
    per_epoch = len(blocks) // (config.batch_size * dist.world_size())

    def epoch_order(epoch: int) -> list[int]:  # seeded per epoch: the same data order after a resume
        order = list(range(len(blocks)))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def save(name: str = "last") -> None:
        weights, optimizer_state = dist.full_state(model, optimizer)  # a collective under FSDP
        if not dist.is_main():
            return
        part = lambda prefix: {k.removeprefix(prefix): v  # noqa: E731
                               for k, v in weights.items() if k.startswith(prefix)}
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": step,
                 "history": history, "generator": generator.get_state(),
                 "lm_head": part("lm_head.") if model.lm_head is not None else None}
        save_diffusion_checkpoint(model, tokenizer, out / name,
                                  {"stage": "diffusion", "step": step, "mask_token": config.mask_token,
                                   "mask_token_id": mask_id, "config": to_dict(config)}, state, part("encoder."))

    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config.bf16 and device.startswith("cuda")
                else contextlib.nullcontext())
    started = time.time()
    model.train()
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and dist.is_main()), desc="diffusion",
               unit="step")
    while step < config.steps:
        slot = step % per_epoch
        order = epoch_order(step // per_epoch)
        start = (slot * dist.world_size() + dist.rank()) * config.batch_size
        ids = blocks[order[start : start + config.batch_size]]
        noisy, masked, ratio = mask_batch(ids, mask_id, generator, config.min_mask_ratio)
        with autocast:
            loss = runner(noisy.to(device), ids.to(device), masked.to(device), ratio.to(device))
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        value = dist.all_mean(loss.item())
        history.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
        if dist.is_main() and (step % config.log_every == 0 or step == 1):
            with (out / "log.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "loss": value, "lr": scheduler.get_last_lr()[0],
                                    "elapsed_s": round(time.time() - started, 2)}) + "\n")
        if config.save_every and step % config.save_every == 0:
            save()
    bar.close()
    save()
    dist.barrier()
    return {"steps": step, "first_loss": history[0] if history else None,
            "last_loss": history[-1] if history else None, "history": history, "output": str(last)}
