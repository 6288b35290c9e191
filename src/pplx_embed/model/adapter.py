"""LoRA adapters (``peft``) over a loaded encoder: attach one to train, load one or several to embed.

An adapter directory is peft's own layout (``adapter_config.json`` + ``adapter_model.safetensors``,
a few MB), so ``peft.PeftModel.from_pretrained`` reads it too. For inference every adapter of one
base checkpoint (same path, dtype and device) is loaded into **one** shared copy of the base weights;
each :class:`AdapterView` selects its adapter for its own forward pass, under a lock per base, so
several adapters are served from the memory of one model plus a few MB each.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from pplx_embed.errors import InputError
from pplx_embed.options import check_adapter


def _peft():
    """The ``peft`` package, or a one-line error saying how to install it."""
    try:
        import peft
    except ImportError:
        raise InputError("LoRA adapters need peft: pip install 'pplx-embed[lora]'") from None
    return peft


def attach_lora(model: torch.nn.Module, rank: int, alpha: int | None = None, dropout: float = 0.0,
                base_name: str | None = None):
    """Wrap ``model`` in a trainable LoRA ``PeftModel`` (rank ``rank`` on every linear layer of the encoder).

    The LoRA layers replace the linear layers *inside* ``model``, so code holding ``model`` runs the
    adapted weights; only the LoRA matrices require gradients. ``alpha`` defaults to ``2 × rank``.
    """
    peft = _peft()
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InputError(f"LoRA rank must be a positive integer, not {rank!r}")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules="all-linear",
                        exclude_modules=["pooler.dense"], base_model_name_or_path=base_name)
    return peft.get_peft_model(model, config)


def load_trainable(model: torch.nn.Module, path: str | Path):
    """``model`` wrapped with the adapter at ``path``, trainable (to resume a LoRA run)."""
    return _peft().PeftModel.from_pretrained(model, str(check_adapter(path)), is_trainable=True)


_BASES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (path, dtype, device) -> _SharedBase
_BASES_LOCK = threading.Lock()


class _SharedBase:
    """One base model with every adapter loaded into it, and the lock its forward passes take."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.peft = None  # the PeftModel once the first adapter is loaded
        self.names: dict[Path, str] = {}
        self.active: str | None = None  # the adapter the LoRA layers run now
        self.lock = threading.Lock()

    def add(self, path: Path) -> str:
        peft = _peft()
        with self.lock:
            if path not in self.names:
                name = f"a{len(self.names)}"
                if self.peft is None:
                    self.peft = peft.PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                else:
                    self.peft.load_adapter(str(path), adapter_name=name)
                self.peft.eval()
                self.active = None  # loading may change which adapter is active
                self.names[path] = name
            return self.names[path]


class AdapterView(torch.nn.Module):
    """The base encoder with one adapter active: what the engine runs for ``Embedder(base, adapter=...)``."""

    def __init__(self, shared: _SharedBase, name: str):
        super().__init__()
        self.shared = shared
        self.adapter_name = name
        self.encoder = shared.model  # registered: parameters(), .to() and .config reach the shared weights
        self.config = shared.model.config

    def forward(self, **inputs):
        shared = self.shared
        with shared.lock:
            if shared.active != self.adapter_name:  # switching walks every LoRA layer: only when it changes
                shared.peft.set_adapter(self.adapter_name)
                shared.active = self.adapter_name
            return shared.model(**inputs)


def adapter_view(path: str | Path, key: tuple, loader: Callable[[], torch.nn.Module]) -> AdapterView:
    """The encoder with the adapter at ``path`` over a base shared with every other adapter of the same
    ``key`` (checkpoint path, dtype, device); ``loader()`` loads that base, once per key."""
    path = check_adapter(path)
    with _BASES_LOCK:
        shared = _BASES.get(key)
        if shared is None:
            shared = _SharedBase(loader())
            _BASES[key] = shared
    try:
        name = shared.add(path)
    except (ValueError, KeyError, RuntimeError) as exc:  # peft: target modules or shapes do not match the base
        raise InputError(f"adapter {path} does not fit base {key[0]}: {exc}") from None
    return AdapterView(shared, name)
