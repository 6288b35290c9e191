"""Data-parallel helpers over ``torch.distributed`` (``torchrun`` sets RANK / WORLD_SIZE / MASTER_*)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from pplx_embed.train.config import check_parallel


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA) → ``(rank, world)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank(), world_size()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def default_device() -> str:
    """This process's device: its local GPU under torchrun, else CUDA/CPU."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``x`` (same shape on all) in rank order, keeping gradients.

    The backward sums each rank's gradient for every slice (reduce-scatter), so a loss computed
    identically on all ranks, after DDP's gradient averaging, gives exactly the single-process gradient.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def wrap(model: torch.nn.Module, device: str, parallel: str = "ddp") -> torch.nn.Module:
    """The module to run forward passes through: ``model`` under DDP or sharded by FSDP (itself on one process)."""
    check_parallel(parallel)
    return wrap_fsdp(model) if parallel == "fsdp" else wrap_ddp(model, device)


def wrap_ddp(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when running distributed, else ``model`` itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def wrap_fsdp(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` with FSDP (``fully_shard``): each transformer layer, then the rest; no-op on one process.

    Parameters become sharded ``DTensor``s; every forward / backward all-gathers the layer it runs,
    so each process holds about 1/world of the weights, gradients and optimizer state at rest.
    """
    if world_size() == 1:
        return model
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):  # the layer stack (Qwen3 ``layers``, BERT ``encoder.layer``)
            for layer in module:
                fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """Unsharded (model, optimizer) state dicts on CPU; a collective under FSDP (call it on every process)."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    return weights, get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore an optimizer state saved by :func:`full_state` (re-sharded under FSDP)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_mean(value: float) -> float:
    """Mean of a scalar over processes (for logging)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) identically on every process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def broadcast(value):
    """``value`` from rank 0 on every process (any picklable object)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
