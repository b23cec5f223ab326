"""The VAE's training step: the lecture's loss (BCE(sum) + beta * KLD) with Adam."""
from __future__ import annotations

import math

import torch

from ..data import ImageData
from ..metrics.elbo import negative_elbo
from ..models.vae import elbo_terms
from ..plots import save_grid
from ..runs import RunDir
from .loop import Task


def make_adam(params, lr: float, weight_decay: float = 0.0):
    """Adam, using the fused CPU/GPU kernel where this torch has one (same maths, faster)."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def lr_factor(schedule: str, progress: float, warmup: float = 0.02) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of training."""
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


class VAETask(Task):
    def __init__(self, model, data: ImageData, lr: float = 1e-3, beta: float = 1.0,
                 schedule: str = "constant", n_grid: int = 64, seed: int = 0):
        self.model = model
        self.data = data
        self.beta = beta
        self.lr = lr
        self.schedule = schedule
        self.optimizer = make_adam(model.parameters(), lr)
        g = torch.Generator().manual_seed(seed + 1)
        self.grid_z = torch.randn(n_grid, model.cfg.latent_dim, generator=g)  # fixed latents

    def set_progress(self, fraction):
        if self.schedule != "constant":
            f = lr_factor(self.schedule, fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * f

    def train_step(self, x, y):
        logits, mu, logvar = self.model(x)
        bce, kld = elbo_terms(logits, x, mu, logvar)
        loss = bce + self.beta * kld
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def end_epoch(self, epoch, train_loss, run: RunDir, final):
        ev = negative_elbo(self.model, self.data.test_x, ImageData.to_float)
        save_grid(self.model.decode(self.grid_z), run.samples_dir / f"epoch_{epoch:03d}.png")
        return {"test_loss": ev["loss"], "test_bce": ev["bce"], "test_kld": ev["kld"]}

    def epoch_line(self, epoch, rec):
        return f"Epoch {epoch}, Loss: {rec['train_loss']:.4f}, Test loss: {rec['test_loss']:.4f}"
