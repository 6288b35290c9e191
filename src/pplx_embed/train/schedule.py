"""The learning-rate schedule every training stage uses: linear warm-up, then linear decay to zero."""

from __future__ import annotations

import torch


def warmup_linear(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Rate × (s+1)/warmup for the first ``warmup`` steps, then down linearly to 0 at step ``total``."""
    total = max(total, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(warmup, 1), max(0.0, (total - s) / max(total - warmup, 1))))


def restore(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Continue a saved schedule at its step, on *this* run's schedule (a resumed run may be given more
    steps): the optimizer's stored rate, from the old schedule, is recomputed."""
    scheduler.load_state_dict(state)
    for group, base, rate in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * rate(scheduler.last_epoch)
