"""SLERP merge of two checkpoints, parameter by parameter (the final pplx-embed-v1 step).

Each parameter tensor is treated as one vector: ``slerp(a, b, t) = sin((1-t)Ω)/sin Ω · a +
sin(tΩ)/sin Ω · b`` with Ω the angle between ``a`` and ``b``; nearly parallel tensors fall back to
linear interpolation. ``t=0`` gives ``a``, ``t=1`` gives ``b``. Non-float tensors (buffers such as
BERT's ``position_ids``) are A's; a buffer only one checkpoint stores (transformers drops some when
saving) is carried from A, so a start model and its fine-tune always merge.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pplx_embed.atomic import atomic_path
from pplx_embed.errors import InputError

log = logging.getLogger(__name__)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation of two same-shaped tensors (computed in float32, returned in ``a``'s dtype)."""
    if a.shape != b.shape:
        raise InputError(f"cannot merge tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if not a.is_floating_point():
        return a.clone()
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    x, y = a.double().flatten(), b.double().flatten()
    cos = torch.dot(x, y) / (x.norm() * y.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < eps or torch.sin(omega).abs() < eps:
        out = (1 - t) * x + t * y
    else:
        out = (torch.sin((1 - t) * omega) * x + torch.sin(t * omega) * y) / torch.sin(omega)
    return out.reshape(a.shape).to(a.dtype)


def slerp_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float,
                      progress: bool = False) -> dict[str, torch.Tensor]:
    """SLERP every parameter of two state dicts with the same parameters and shapes; A's layout wins.

    A non-float tensor only A holds (a buffer B's save dropped) is A's; a float tensor only one side
    holds means different architectures and is refused.
    """
    if not 0.0 <= t <= 1.0:
        raise InputError(f"t must be between 0 and 1, got {t}")
    missing = sorted(k for k in set(a) ^ set(b) if (a.get(k) if k in a else b[k]).is_floating_point())
    if missing:
        raise InputError(f"checkpoints have different parameters (e.g. {', '.join(missing[:5])}); "
                         "merge same-architecture models")
    carried = [k for k in a if k not in b]
    if carried:
        log.info("merge: %d buffer(s) only in A carried over (%s)", len(carried), ", ".join(carried[:3]))
    names = tqdm(a, desc="merge", unit="tensor", disable=not progress)
    return {name: slerp(a[name], b[name], t) if name in b else a[name].clone() for name in names}


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise InputError(f"{directory} holds no .safetensors weights")
    return files


def merge_checkpoints(a: str | Path, b: str | Path, out: str | Path, t: float = 0.5, overwrite: bool = False,
                      progress: bool = False) -> Path:
    """Write ``slerp(A, B, t)`` to ``out``: A's files (config, tokenizer, modules) with merged weights.

    A and B are checkpoint directories, or names ``Embedder`` resolves (``minilm``, hub aliases).
    An existing non-empty ``out`` is replaced only with ``overwrite``.
    """
    from pplx_embed.model.checkpoint import resolve

    a, b = (resolve(x)[1] if not Path(x).is_dir() else x for x in (a, b))
    a, b, out = Path(a), Path(b), Path(out)
    for path in (a, b):
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is not a checkpoint directory (no config.json)")
    if out.resolve() in (a.resolve(), b.resolve()):
        raise InputError("the output directory must differ from both inputs")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} already exists; choose another output or pass overwrite (--overwrite)")
    weights_a = {f.name: load_file(f) for f in _weight_files(a)}
    tensors_b: dict[str, torch.Tensor] = {}
    for f in _weight_files(b):
        tensors_b.update(load_file(f))
    tensors_a = {k: v for part in weights_a.values() for k, v in part.items()}
    merged = slerp_state_dicts(tensors_a, tensors_b, t, progress)
    with atomic_path(out, directory=True) as tmp:  # complete or absent, whatever crashes in between
        shutil.copytree(a, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.safetensors", "trainer_state*", "optimizer*"))
        for name, part in weights_a.items():
            save_file({k: merged[k].contiguous() for k in part}, str(tmp / name), metadata={"format": "pt"})
        (tmp / "merge.json").write_text(json.dumps({"method": "slerp", "t": t, "a": str(a), "b": str(b)}, indent=2))
        shutil.rmtree(out, ignore_errors=True)
    return out
