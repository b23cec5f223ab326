"""The engine: where and how training and inference run -- the device, the autocast dtype,
seeding and the RNG state a resume restores, and the process's rank and world size.
Families ask the engine; nothing else picks a device.

    eng = Engine.create("auto")      # a CUDA GPU (or Apple's MPS) when there is one, else the CPU
    model.to(eng.device)
    with eng.autocast():
        loss = model(x.to(eng.device))

Multi-process training is PyTorch's own: under torchrun, `Engine.for_training` joins the
process group (gloo on the CPU, nccl on CUDA, one GPU per local rank) and `wrap` puts a
module in DistributedDataParallel, whose all-reduce (one hook, below) turns each rank's
gradient into the gradient of the whole global batch. The semantics, the same for every
trainer:

- `--batch-size B` is the global batch. Each step's B examples (the loop's slice of the
  epoch's permutation, or the B windows a language model draws) are split into
  world_size contiguous parts, rank r taking part r (`split`); an epoch's last, partial
  batch drops its last (len mod world_size) examples so every rank's part has one size.
- Every rank holds the same global RNG state (one seed, same-shaped draws); per-example
  noise is drawn for the whole global batch and each rank keeps its rows (`randn`,
  `rows`), so the VAE's reparameterisation noise and a GAN's latents are the very numbers
  one process with batch B would draw.
- Gradients: a task whose loss sums over its examples gets the sum over ranks; one whose
  loss averages gets the average weighted by each rank's share, i.e. the global batch's
  mean -- both exactly the one-process gradient, up to float summation order.
"""
from __future__ import annotations

import datetime
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..util import dist as procs
from ..util.device import resolve_device
from ..util.errors import GenlabError
from ..util.options import Opt

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")
DEVICE = Opt("device", str, "auto", metavar="DEVICE", label="--device",
             help="auto (a CUDA GPU or Apple MPS when there is one, else the CPU), cpu, cuda, cuda:N, mps")


@dataclass
class Engine:
    device: torch.device
    dtype: str = "float32"        # autocast dtype of the forward pass (float32: none)
    rank: int = 0                 # this process among world_size (0: the one that writes files)
    world_size: int = 1
    part: tuple = field(default=(0, 0, 0))   # this step's rows of the global batch: (lo, hi, n)
    comm_seconds: float = 0.0     # time spent in the loop's own collectives (stop flag, loss)

    @classmethod
    def create(cls, device: str | None = "auto", dtype: str = "float32") -> "Engine":
        if dtype not in DTYPES:
            raise GenlabError(f"unknown dtype '{dtype}' (available: {', '.join(DTYPES)})")
        return cls(resolve_device(device), dtype)

    @classmethod
    def for_training(cls, device: str | None = "auto", dtype: str = "float32") -> "Engine":
        """The engine of a training run: under torchrun (WORLD_SIZE > 1 in the
        environment) this process's rank in a joined process group, its GPU the one of its
        local rank; else one process, as `create`."""
        eng = cls.create(device, dtype)
        world = procs.world_size()
        if world == 1:
            return eng
        if eng.device.type == "cuda":
            eng.device = torch.device("cuda", procs.local_rank())
            torch.cuda.set_device(eng.device)
        elif eng.device.type == "mps":
            raise GenlabError("multi-process training runs on CPUs (gloo) or CUDA GPUs (nccl), not on MPS")
        if not dist.is_initialized():
            _join(eng.device)
        eng.rank, eng.world_size = dist.get_rank(), dist.get_world_size()
        return eng

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def record(self, train_cfg: dict, global_batch: int) -> dict:
        """The process facts a run's config.json keeps (in its train section)."""
        train_cfg.update(world_size=self.world_size, global_batch_size=global_batch)
        return train_cfg

    @property
    def main(self) -> bool:
        """The process that writes the run directory."""
        return self.rank == 0

    def autocast(self):
        """The forward pass's autocast context (nothing for float32)."""
        if self.dtype == "float32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type,
                              dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype])

    # -- randomness ----------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)  # seeds the CPU generator and every CUDA device's
        # oneDNN's convolution backward passes may sum across threads in completion order;
        # its deterministic mode fixes that order (no cost measured on the style-based
        # generator's training), so a seeded run repeats bit for bit even on a busy machine
        torch.backends.mkldnn.deterministic = True

    def rng_state(self) -> dict:
        """The global RNG state a resume must restore (the CPU generator, and the device's)."""
        state = {"rng_state": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng_state"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["rng_state"])
        if self.device.type == "cuda" and "cuda_rng_state" in state:
            torch.cuda.set_rng_state(state["cuda_rng_state"], self.device)

    # -- data --------------------------------------------------------------------------
    def usable(self, n: int) -> int:
        """How many of a global batch of n examples the ranks use: n less (n mod
        world_size), so every rank's part has the same size."""
        return n - n % self.world_size

    def split(self, batch):
        """This rank's contiguous part of a global batch (a tensor or a list, first
        dimension the examples); remembers the part for `rows` and the gradient's weight."""
        n = self.usable(len(batch))
        per = n // self.world_size
        lo = self.rank * per
        self.part = (lo, lo + per, n)
        return batch if self.world_size == 1 else batch[lo:lo + per]

    @property
    def share(self) -> float:
        """This rank's share of the current global batch."""
        lo, hi, n = self.part
        return (hi - lo) / n if n else 1.0 / self.world_size

    @property
    def global_rows(self) -> int:
        """The size of the current global batch (set by `split`)."""
        return self.part[2]

    def rows(self, t):
        """This rank's rows of something drawn for the whole global batch."""
        if self.world_size == 1 or t is None:
            return t
        lo, hi, _ = self.part
        return t[lo:hi]

    def per_example(self, draw, n: int):
        """`draw(k)` makes something random for k examples (a tensor, None, or a tuple of
        them). For this rank's part of the global batch: its rows of the whole batch's draw,
        so the ranks together draw what one process would; for any other n, draw(n)."""
        lo, hi, total = self.part
        if self.world_size == 1 or n != hi - lo:
            return draw(n)
        out = draw(total)
        return tuple(self.rows(o) for o in out) if isinstance(out, tuple) else self.rows(out)

    def randn(self, n: int, *shape, device=None, dtype=None) -> torch.Tensor:
        """Standard normal noise for n examples (`per_example`)."""
        return self.per_example(lambda k: torch.randn(k, *shape, device=device, dtype=dtype), n)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the engine's device."""
        return x if x.device == self.device else x.to(self.device, non_blocking=True)

    # -- processes ---------------------------------------------------------------------
    def wrap(self, module: torch.nn.Module, reduce: str = "mean") -> torch.nn.Module:
        """The module to train with: itself in one process; under torchrun, in
        DistributedDataParallel (which also makes every rank start from rank 0's weights),
        its gradients reduced as the task's loss says: `sum` (a loss summed over the
        examples: the ranks' gradients add up) or `mean` (averaged over them: the ranks'
        gradients weighted by their shares). Buffers are not broadcast: each rank keeps its
        own batch-norm statistics, and rank 0's are saved."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP
        if not any(p.requires_grad for p in module.parameters()):
            return module
        ddp = DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                  forward_sync_buffers=False)
        if reduce not in ("sum", "mean"):
            raise ValueError(f"unknown gradient reduction {reduce}")
        ddp.register_comm_hook((self, reduce), _reduce_hook)
        return ddp

    def fsdp(self, module: torch.nn.Module) -> None:
        """Shard `module` over the ranks with FSDP2: each block of its largest stack of
        layers (a transformer's decoder layers), then the whole. Its weights become
        DTensors: each rank holds 1/world_size of every one."""
        from torch.distributed.fsdp import fully_shard
        stacks = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
        for block in max(stacks, key=len, default=[]):
            fully_shard(block)
        fully_shard(module)

    @staticmethod
    def place(state: dict, optimizer: torch.optim.Optimizer) -> dict:
        """A whole optimiser state dict, each tensor cut to its parameter's shard."""
        from torch.distributed.tensor import DTensor, distribute_tensor
        params = [p for g in optimizer.param_groups for p in g["params"]]
        out = {}
        for i, st in state["state"].items():
            p = params[int(i)]
            out[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                      if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                      for k, v in st.items()}
        return {**state, "state": out}

    def average(self, *values: float) -> list[float]:
        """Each value's mean over the ranks, weighted by their shares of the batch (itself in
        one process): a statistic of the whole global batch."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64) * self.share
        dist.all_reduce(t)
        return t.tolist()

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor summed over the ranks (itself in one process)."""
        if self.world_size == 1:
            return t
        t = t.detach().to(torch.float64).clone()
        dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """Whether any rank says so (every rank gets the same answer)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t)
        return bool(t > 0)

    def agree(self, value: float, stop: int) -> tuple[float, int]:
        """One all-reduce per step: the sum of `value` over the ranks and the largest
        `stop` code (0, 1 or 2), so every rank stops at the same step, whichever saw the
        reason first."""
        if self.world_size == 1:
            return value, stop
        t0 = time.monotonic()
        t = torch.tensor([value, float(stop == 1), float(stop == 2)], dtype=torch.float64)
        dist.all_reduce(t)
        self.comm_seconds += time.monotonic() - t0
        return float(t[0]), 2 if t[2] > 0 else 1 if t[1] > 0 else 0

    def barrier(self) -> None:
        """Wait until every rank gets here (rank 0 evaluates and writes while they wait)."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def check_split(batch_size: int, processes: int) -> None:
    """Every process needs at least one example of each global batch."""
    if batch_size < processes:
        raise GenlabError(f"--batch-size {batch_size} cannot be split over {processes} processes (each needs at "
                          f"least one example: give at least {processes}, or fewer processes)")


def full_tensor(t):
    """A tensor whole: a sharded DTensor gathered from every rank (a collective), else itself."""
    full = getattr(t, "full_tensor", None)
    return full().detach().cpu() if full is not None else t


def _join(device: torch.device) -> None:
    """Join torchrun's process group. Its key-value store outlives a restart of the
    workers (torchrun --max-restarts), so each attempt keys its group by the restart count:
    a restarted rank must not find the dead attempt's addresses."""
    timeout = datetime.timedelta(minutes=30)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                            store=dist.PrefixStore(f"genlab/attempt_{attempt}", store), rank=rank, world_size=world)


def _reduce_hook(state, bucket):
    """DDP's communication hook: each rank's gradient bucket, weighted by its share for a
    mean loss, summed over the ranks with one all-reduce."""
    engine, reduce = state
    buf = bucket.buffer()
    if reduce == "mean":
        buf.mul_(engine.share)
    return dist.all_reduce(buf, async_op=True).get_future().then(lambda fut: fut.value()[0])


CPU = Engine(torch.device("cpu"))
