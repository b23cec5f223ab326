"""The engine: where and how training and inference run -- the device, the autocast dtype,
seeding and the RNG state a resume restores, and the process's rank and world size (one
process today; multi-process training plugs in here). Families ask the engine; nothing
else picks a device.

    eng = Engine.create("auto")      # a CUDA GPU (or Apple's MPS) when there is one, else the CPU
    model.to(eng.device)
    with eng.autocast():
        loss = model(x.to(eng.device))
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

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

    @classmethod
    def create(cls, device: str | None = "auto", dtype: str = "float32") -> "Engine":
        if dtype not in DTYPES:
            raise GenlabError(f"unknown dtype '{dtype}' (available: {', '.join(DTYPES)})")
        return cls(resolve_device(device), dtype)

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
    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This process's share of an epoch's order of examples (all of it in one process)."""
        return order if self.world_size == 1 else order[self.rank::self.world_size]

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the engine's device."""
        return x if x.device == self.device else x.to(self.device, non_blocking=True)


CPU = Engine(torch.device("cpu"))
