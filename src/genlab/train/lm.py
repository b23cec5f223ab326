"""The language model's training step: next-token cross-entropy on random windows of the
encoded corpus, AdamW with warmup + cosine decay, gradient clipping, gradient
accumulation, optional bf16 autocast (the engine's). Also the held-out estimate used
while training (`genlab eval` scores the whole split: metrics/text.py).
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..data.tokenizer import windows
from .engine import CPU, Engine, full_tensor
from .loop import IterTask
from .optim import make_optimizer, set_lr, warmup_lr


class StepTask(IterTask):
    """An optimisation step shared by language-model trainers: AdamW on the parameters that
    require grad, warmup + cosine schedule, gradient accumulation and clipping, autocast.
    A subclass supplies `batch_loss()` (drawing its batch with `self.gen`) and `evaluate()`."""

    def __init__(self, model, *, batch_size: int, grad_accum: int = 1, lr: float = 1e-3,
                 min_lr: float | None = None, warmup_iters: int = 100, schedule: str = "cosine",
                 weight_decay: float = 0.1, betas=(0.9, 0.99), grad_clip: float = 1.0,
                 engine: Engine = CPU, seed: int = 0, checkpoint=None, fsdp: bool = False):
        self.model = model
        self.fsdp, self.sharded = fsdp, False
        self._opt = dict(lr=lr, betas=betas, weight_decay=weight_decay, decoupled=True)
        self.checkpoint = checkpoint if checkpoint is not None else model
        self.engine = engine
        self.device = engine.device
        self.batch, self.accum = batch_size, grad_accum
        self.lr, self.min_lr = lr, lr / 10 if min_lr is None else min_lr
        self.warmup, self.schedule = warmup_iters, schedule
        self.grad_clip = grad_clip
        self.optimizer = make_optimizer(model, **self._opt)
        self.gen = torch.Generator().manual_seed(seed)
        self.current_lr = lr
        self.net = model

    def distribute(self, engine: Engine) -> None:
        """Under torchrun: train the model in DDP, or with `fsdp` sharded by FSDP2 (each
        transformer block, then the whole; the optimiser rebuilt on the shards, a resumed
        state placed on them); every rank draws the same global batch (one generator, one
        seed) and keeps its part (`self.engine.split`)."""
        self.engine = engine
        if not (self.fsdp and engine.distributed):
            self.net = engine.wrap(self.model, "mean")
            return
        state = self.optimizer.state_dict()
        engine.fsdp(self.model)
        self.optimizer = make_optimizer(self.model, **self._opt)
        if state["state"]:
            self.optimizer.load_state_dict(engine.place(state, self.optimizer))
        self.net, self.sharded = self.model, True

    def checkpoint_state(self) -> dict:
        """What the checkpoint holds, whole (under FSDP: gathered from every rank, on all)."""
        return {k: full_tensor(v) for k, v in self.checkpoint.state_dict().items()}

    def set_progress(self, iteration: int, fraction: float) -> None:
        self.current_lr = warmup_lr(iteration, fraction, self.lr, self.min_lr, self.warmup, self.schedule)
        set_lr(self.optimizer, self.current_lr)

    def batch_loss(self) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self) -> float:
        total = 0.0
        for i in range(self.accum):
            # under DDP the gradients are all-reduced once, after the last micro-batch
            sync = i == self.accum - 1 or not hasattr(self.net, "no_sync")
            with self.engine.autocast(), (nullcontext() if sync else self.net.no_sync()):
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
        """(Under FSDP: the optimiser's state gathered whole, on every rank.)"""
        opt = self.optimizer.state_dict()
        if self.sharded:
            opt = {**opt, "state": {i: {k: full_tensor(v) for k, v in st.items()} for i, st in opt["state"].items()}}
        return {"optimizer": opt, "gen_state": self.gen.get_state()}

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
        starts = self.engine.split(torch.randint(0, hi + 1, (self.batch,), generator=self.gen).tolist())
        x, y = windows(self.data["train"], starts, self.block)
        _, loss = self.net(x.to(self.device), y.to(self.device))
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over every position of the fixed held-out windows (nanoGPT's estimate,
        without its randomness). `genlab eval` scores the whole split instead."""
        total, n = 0.0, 0
        for i in range(0, len(self.eval_starts), self.eval_batch):
            x, y = windows(self.data["val"], self.eval_starts[i:i + self.eval_batch], self.block)
            with self.engine.autocast():
                _, loss = self.model(x.to(self.device), y.to(self.device))
            total += float(loss) * y.numel()
            n += y.numel()
        return {"val_loss": total / n, "val_tokens": n}
