"""The language model's training step: next-token cross-entropy on random windows of the
encoded corpus, AdamW with warmup + cosine decay, gradient clipping, gradient
accumulation, optional bf16 autocast. Also the held-out evaluation used in training and
by `genlab eval`.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from .loop import IterTask


def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases or LayerNorm gains), as in
    nanoGPT; the fused kernel when this torch has one."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lm_lr(it: int, frac: float, lr: float, min_lr: float, warmup_iters: int, schedule: str) -> float:
    """Linear warmup over `warmup_iters` steps, then cosine decay from lr to min_lr over the
    fraction `frac` of training done (iterations, or the time budget when one is set)."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    if schedule == "constant":
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))


def autocast(dtype: str, device: torch.device):
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype={"bfloat16": torch.bfloat16,
                                                         "float16": torch.float16}[dtype])


def windows(data: np.ndarray, starts, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([data[i:i + block].astype(np.int64) for i in starts]))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block].astype(np.int64) for i in starts]))
    return x, y


@torch.no_grad()
def sliding_loss(model, data: np.ndarray, block: int, stride: int | None = None, batch: int = 32,
                 device=None, progress=None) -> tuple[float, int]:
    """Mean next-token loss (nats) over `data`, each token predicted once with as much
    context as the window allows: windows of `block` tokens move by `stride` (default
    block/2) and only the tokens not scored by the previous window count.
    Returns (loss, tokens scored)."""
    n = len(data) - 1
    if n < 1:
        raise ValueError("need at least two tokens")
    block = min(block, n)
    stride = max(1, min(stride or block // 2, block))
    starts = list(range(0, max(n - block, 0) + 1, stride))
    if starts[-1] + block < n:
        starts.append(n - block)
    total, count, scored_to = 0.0, 0, 0
    device = device or torch.device("cpu")
    jobs = []  # (start, first position of the window to score)
    for s in starts:
        jobs.append((s, scored_to - s))
        scored_to = s + block
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        x, y = windows(data, [s for s, _ in chunk], block)
        logits, _ = model(x.to(device))
        lp = torch.log_softmax(logits.float(), dim=-1)
        nll = -lp.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1)   # (B, block)
        for row, (_, first) in zip(nll, chunk):
            total += float(row[first:].sum())
            count += block - first
        if progress:
            progress(len(chunk))
    return total / count, count


class StepTask(IterTask):
    """An optimisation step shared by language-model trainers: AdamW on the parameters that
    require grad, warmup + cosine schedule, gradient accumulation and clipping, autocast.
    A subclass supplies `batch_loss()` (drawing its batch with `self.gen`) and `evaluate()`."""

    def __init__(self, model, *, batch_size: int, grad_accum: int = 1, lr: float = 1e-3,
                 min_lr: float | None = None, warmup_iters: int = 100, schedule: str = "cosine",
                 weight_decay: float = 0.1, betas=(0.9, 0.99), grad_clip: float = 1.0,
                 dtype: str = "float32", device: str = "cpu", seed: int = 0, checkpoint=None):
        self.model = model
        self.checkpoint = checkpoint if checkpoint is not None else model
        self.device = torch.device(device)
        self.batch, self.accum = batch_size, grad_accum
        self.lr, self.min_lr = lr, lr / 10 if min_lr is None else min_lr
        self.warmup, self.schedule = warmup_iters, schedule
        self.grad_clip, self.dtype = grad_clip, dtype
        self.optimizer = make_adamw(model, lr, weight_decay, betas)
        self.gen = torch.Generator().manual_seed(seed)
        self.current_lr = lr

    def set_progress(self, iteration: int, fraction: float) -> None:
        self.current_lr = lm_lr(iteration, fraction, self.lr, self.min_lr, self.warmup, self.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = self.current_lr

    def batch_loss(self) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self) -> float:
        total = 0.0
        for _ in range(self.accum):
            with autocast(self.dtype, self.device):
                loss = self.batch_loss()
            (loss / self.accum).backward()
            total += float(loss.detach())
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / self.accum

    def log_fields(self) -> dict:
        return {"lr": self.current_lr}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "gen_state": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["gen_state"])


class LMTask(StepTask):
    """Next-token prediction on random windows of an encoded corpus."""

    def __init__(self, model, data: dict, *, block_size: int, eval_tokens: int = 65536,
                 eval_batch: int = 64, **kw):
        super().__init__(model, **kw)
        self.data, self.block, self.eval_batch = data, block_size, eval_batch
        n_train = len(data["train"])
        if n_train <= block_size + 1:
            raise ValueError(f"the training split has {n_train} tokens; it needs more than the "
                             f"context window of {block_size}")
        # A fixed set of held-out windows spread evenly over the whole held-out split, the
        # same at every evaluation (so "best" compares like with like).
        hi = len(data["val"]) - block_size - 1
        if hi < 0:
            raise ValueError(f"the held-out split has {len(data['val'])} tokens; it needs more "
                             f"than the context window of {block_size}")
        k = max(1, min(eval_tokens // block_size, hi + 1))
        self.eval_starts = np.linspace(0, hi, k).round().astype(np.int64).tolist()

    def batch_loss(self) -> torch.Tensor:
        hi = len(self.data["train"]) - self.block - 1
        starts = torch.randint(0, hi + 1, (self.batch,), generator=self.gen).tolist()
        x, y = windows(self.data["train"], starts, self.block)
        _, loss = self.model(x.to(self.device), y.to(self.device))
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over every position of the fixed held-out windows (nanoGPT's estimate,
        without its randomness). `genlab eval` scores the whole split instead."""
        total, n = 0.0, 0
        for i in range(0, len(self.eval_starts), self.eval_batch):
            x, y = windows(self.data["val"], self.eval_starts[i:i + self.eval_batch], self.block)
            with autocast(self.dtype, self.device):
                _, loss = self.model(x.to(self.device), y.to(self.device))
            total += float(loss) * y.numel()
            n += y.numel()
        return {"val_loss": total / n, "val_tokens": n}
