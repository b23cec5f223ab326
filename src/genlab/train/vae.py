"""The VAE's training step: the lecture's loss (BCE(sum) + beta * KLD) with Adam."""
from __future__ import annotations

import torch

from ..data import ImageData
from ..metrics.elbo import negative_elbo
from ..models.vae import elbo_terms
from .condition import Conditioner
from .loop import Task
from .optim import lr_factor, make_optimizer, set_lr


class VAETask(Task):
    def __init__(self, model, data: ImageData, lr: float = 1e-3, beta: float = 1.0,
                 schedule: str = "constant", n_grid: int = 64, seed: int = 0, cond: Conditioner | None = None):
        self.model = model
        self.data = data
        self.cond = cond or Conditioner()
        self.grid_c = self.cond.grid(n_grid)
        self.test_c = self.cond.test_conditions(data)
        self.beta = beta
        self.lr = lr
        self.schedule = schedule
        self.optimizer = make_optimizer(model.parameters(), lr=lr)
        self.net = model  # what train_step runs (the loop's distribute() may wrap it)
        g = torch.Generator().manual_seed(seed + 1)
        self.grid_z = torch.randn(n_grid, model.cfg.latent_dim, generator=g)  # fixed latents

    grad_reduce = "sum"  # the loss sums over the batch

    def set_progress(self, fraction):
        if self.schedule != "constant":
            set_lr(self.optimizer, self.lr * lr_factor(self.schedule, fraction))

    def targets(self, train_y):
        return self.cond.targets(self.data)

    def train_step(self, x, y):
        c, _ = self.cond.real(y)
        eps = self.engine.randn(x.shape[0], self.model.cfg.latent_dim, device=x.device)  # the global batch's rows
        logits, mu, logvar = self.net(x, c, eps=eps)
        bce, kld = elbo_terms(logits, x, mu, logvar)
        loss = bce + self.beta * kld
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def end_epoch(self, epoch, train_loss, final):
        ev = negative_elbo(self.model, self.data.test_x, ImageData.to_float, c=self.test_c)
        return {"test_loss": ev["loss"], "test_bce": ev["bce"], "test_kld": ev["kld"]}

    def grid(self):
        dev = next(self.model.parameters()).device
        return self.model.decode(self.grid_z.to(dev), None if self.grid_c is None else self.grid_c.to(dev))

    def epoch_line(self, epoch, rec):
        return f"Epoch {epoch}, Loss: {rec['train_loss']:.4f}, Test loss: {rec['test_loss']:.4f}"
