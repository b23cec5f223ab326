"""What genlab needs to know about linear layers it did not write: an nn.Linear holds its
weight as (out, in); transformers' GPT-2 `Conv1D` is the same layer stored as (in, out).
Pruning, int8 quantization and LoRA-adapter checks all go through these helpers."""
from __future__ import annotations

import torch
import torch.nn as nn


def is_conv1d(m: nn.Module) -> bool:
    """A transformers Conv1D (GPT-2's linear layer, weight stored (in, out))."""
    w = getattr(m, "weight", None)
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and w is not None and w.dim() == 2


def is_linear(m: nn.Module) -> bool:
    """An nn.Linear or a transformers Conv1D."""
    return isinstance(m, nn.Linear) or is_conv1d(m)


def float_weight(m: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an nn.Linear or a Conv1D."""
    return m.weight.t() if is_conv1d(m) else m.weight


def in_out(m: nn.Module) -> tuple[int, int] | None:
    """(in features, out features) of a linear layer; None for anything else."""
    if not is_linear(m):
        return None
    out_f, in_f = float_weight(m).shape
    return int(in_f), int(out_f)


def linear_layers(module: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: layer} of every nn.Linear and Conv1D."""
    return {n: m for n, m in module.named_modules() if is_linear(m)}
