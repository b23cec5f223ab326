"""8-bit weights: a Linear layer whose weight is stored as int8 with one float scale per
output channel, and an Embedding that shares such a weight (tied input and output
embeddings, as in GPT and SmolLM2).

    w_int8[o, :] = round(w[o, :] / scale[o]),  scale[o] = max|w[o, :]| / 127

At run time the activations are quantized too, per call ("dynamic" quantization): on a
CPU with PyTorch's fbgemm kernels the matrix product runs in int8 with int32
accumulation (`torch.ops.quantized.linear_dynamic`, the kernel behind the deprecated
`torch.ao.quantization.quantize_dynamic`). Elsewhere -- a GPU, a build without fbgemm --
the weight is dequantized and multiplied in float, with the same numbers stored. The
state dict is plain tensors (int8 weight, float32 scale, bias), so it saves to
safetensors and loads anywhere.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def _fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row): symmetric, per output channel."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ dequant(W).T + b, with W held in int8 (4x smaller than float32)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None   # fbgemm's prepacked weight, built on first use

    @classmethod
    def from_float(cls, lin: nn.Module) -> "Int8Linear":
        """From an nn.Linear, or a transformers Conv1D (GPT-2's linear layer, weight (in, out))."""
        w = lin.weight.t() if _is_conv1d(lin) else lin.weight
        m = cls(w.shape[1], w.shape[0], lin.bias is not None)
        q, s = quantize_rows(w)
        m.weight.copy_(q)
        m.scale.copy_(s)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        return m.to(lin.weight.device)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scale[:, None]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None

    def _apply(self, fn, *args, **kwargs):
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def _prepack(self):
        """fbgemm's packed int8 weight, or None where this PyTorch has no such kernel (the
        quantized-tensor API it needs is deprecated: then the float path takes over)."""
        if self._packed is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    qw = torch.quantize_per_channel(self.dequantize(), self.scale.double(),
                                                    torch.zeros(self.out_features, dtype=torch.long),
                                                    0, torch.qint8)
                    prev = torch.backends.quantized.engine
                    torch.backends.quantized.engine = "fbgemm"
                    try:
                        self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)
                    finally:
                        torch.backends.quantized.engine = prev
            except (RuntimeError, AttributeError, NotImplementedError):
                self._packed = False
        return None if self._packed is False else self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and _fbgemm() and self._prepack() is not None:
            # reduce_range: 7-bit activations, so AVX2's int16 pair sums cannot saturate
            return torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed, True)
        return F.linear(x, self.dequantize().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """An embedding lookup from an int8 weight + per-row scale, usually shared with the
    tied output layer (the same tensors, stored once)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx].float() * self.scale[idx].unsqueeze(-1)


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and m.weight.dim() == 2


def quantize_int8(module: nn.Module, skip=()) -> int:
    """Replace, in place, every nn.Linear (or GPT-2 Conv1D) of `module` by an Int8Linear (except those whose
    qualified name is in `skip`), and every nn.Embedding whose weight is tied to such a
    Linear by an Int8Embedding sharing its int8 tensors. Returns the number of layers
    replaced. Other layers (norms, untied embeddings, convolutions) stay float32."""
    named = dict(module.named_modules())
    linears = {n: m for n, m in named.items() if (isinstance(m, nn.Linear) or _is_conv1d(m)) and n not in skip}
    new = {n: Int8Linear.from_float(m) for n, m in linears.items()}
    by_weight = {id(m.weight): new[n] for n, m in linears.items()}
    for n, m in named.items():
        if isinstance(m, nn.Embedding) and id(m.weight) in by_weight:
            src = by_weight[id(m.weight)]
            emb = Int8Embedding(m.num_embeddings, m.embedding_dim)
            emb.weight, emb.scale = src.weight, src.scale   # tied: the same tensors
            new[n] = emb
    for n, m in new.items():
        parent, _, child = n.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, m)
    return len(new)

