"""The one optimiser and schedule builder every family trains with.

Adam for the image families (the lecture's), AdamW with weight decay on matrices only
(not biases or norm gains, as in nanoGPT) for language models and fine-tuning; the fused
kernel where this torch has one (same maths, faster). Schedules are multipliers of the
base learning rate as a function of the fraction of training done."""
from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "cosine", "linear")


def make_optimizer(params, *, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
                   decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam over `params` (an iterable of parameters), or, with `decoupled`, AdamW over a
    module's trainable parameters with `weight_decay` on its matrices only."""
    if decoupled:
        ps = [p for p in params.parameters() if p.requires_grad]
        groups = [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]
        kind, kw = torch.optim.AdamW, {}
    else:
        groups, kind, kw = params, torch.optim.Adam, {"weight_decay": weight_decay}
    groups = list(groups)
    try:
        return kind(groups, lr=lr, betas=tuple(float(b) for b in betas), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return kind(groups, lr=lr, betas=tuple(float(b) for b in betas), **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_factor(schedule: str, progress: float, warmup: float = 0.02) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of training (a fractional warmup,
    then constant, cosine down to 2%, or linear down to 2%)."""
    if schedule == "constant":
        return 1.0
    if progress < warmup:
        return (progress + 1e-3) / warmup
    p = (progress - warmup) / (1 - warmup)
    if schedule == "cosine":
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "linear":
        return max(0.02, 1.0 - p)
    raise ValueError(f"unknown schedule {schedule}")


def warmup_lr(it: int, frac: float, lr: float, min_lr: float, warmup_iters: int, schedule: str) -> float:
    """Linear warmup over `warmup_iters` steps, then cosine decay from lr to min_lr over the
    fraction `frac` of training done (iterations, or the time budget when one is set)."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    if schedule == "constant":
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))
