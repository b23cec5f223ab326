"""8-bit weights: a Linear layer whose weight is stored as int8 with one float scale per
output channel, and an Embedding that shares such a weight (tied input and output
embeddings, as in GPT and SmolLM2).

    w_int8[o, :] = round(w[o, :] * smooth / scale[o]),  scale[o] = max|w[o, :] * smooth| / 127
    y = (x / smooth) @ dequant(w_int8).T + b

At run time the activations are quantized too, per call ("dynamic" quantization) and per
token: each row of x is scaled to the same range before PyTorch's fbgemm kernel
(`torch.ops.quantized.linear_dynamic`, the kernel behind the deprecated
`torch.ao.quantization.quantize_dynamic`, which takes one range for the whole tensor)
quantizes it, multiplies in int8 with int32 accumulation, and the rows are scaled back.
`smooth` (SmoothQuant, Xiao et al. 2023; all ones unless calibrated) moves the range of
outlier activation channels into the weights, where per-channel scales absorb it.
Where fbgemm is missing -- a GPU, a build without it -- the weight is dequantized and
multiplied in float (weight-only int8), from the same stored numbers. The state dict is
plain tensors (int8 weight, float32 scale, smooth and bias), so it saves to safetensors.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import float_weight, linear_layers

_FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row): symmetric, per output channel."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ W.T + b with W held in int8 (4x smaller than float32)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("smooth", torch.ones(in_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # 1: each token's activations get their own int8 range; 0: one range per call
        # (faster; calibration chooses it where it costs no accuracy)
        self.register_buffer("per_token", torch.ones(1, dtype=torch.uint8))
        self._packed = None     # fbgemm's prepacked weight, built on first use (False: no fbgemm)
        self._flags = None      # (smoothed, per_token) as Python bools, read on first use

    @classmethod
    def from_float(cls, lin: nn.Module, smooth: torch.Tensor | None = None) -> "Int8Linear":
        """From an nn.Linear or a transformers Conv1D; `smooth` (in_features,) divides the
        input and multiplies the weight's columns (the product is unchanged)."""
        w = float_weight(lin).detach().float()
        m = cls(w.shape[1], w.shape[0], lin.bias is not None)
        if smooth is not None:
            m.smooth.copy_(smooth)
            w = w * smooth[None, :]
        q, s = quantize_rows(w)
        m.weight.copy_(q)
        m.scale.copy_(s)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        return m.to(lin.weight.device)

    @classmethod
    def concat(cls, layers: list) -> "Int8Linear":
        """One layer computing cat([l(x) for l in layers], -1) for int8 layers that read the
        same input with the same smoothing and activation ranges (q/k/v, gate/up): one int8
        product, one quantization of the input."""
        first = layers[0]
        f = cls(first.in_features, sum(m.out_features for m in layers), first.bias is not None).to(first.weight.device)
        f.weight.copy_(torch.cat([m.weight for m in layers]))
        f.scale.copy_(torch.cat([m.scale for m in layers]))
        f.smooth.copy_(first.smooth)
        f.per_token.copy_(first.per_token)
        if f.bias is not None:
            f.bias.copy_(torch.cat([m.bias for m in layers]))
        return f

    @staticmethod
    def fusable(layers: list) -> bool:
        return len(layers) > 1 and all(type(m) is Int8Linear for m in layers) and all(
            torch.equal(m.smooth, layers[0].smooth) and bool(m.per_token == layers[0].per_token)
            and (m.bias is None) == (layers[0].bias is None) for m in layers)

    def dequantize(self) -> torch.Tensor:
        """The float weight this layer multiplies by (smoothing undone)."""
        return self.weight.float() * self.scale[:, None] / self.smooth[None, :]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = self._flags = None

    def _apply(self, fn, *args, **kwargs):
        self._packed = self._flags = None
        return super()._apply(fn, *args, **kwargs)

    def _prepack(self):
        """fbgemm's packed int8 weight (bias kept apart), or None where this PyTorch has no
        such kernel (the quantized-tensor API it needs is deprecated: then the float path
        takes over)."""
        if self._packed is None:
            self._packed = False
            if _FBGEMM and self.weight.device.type == "cpu":
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        qw = torch._make_per_channel_quantized_tensor(
                            self.weight, self.scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
                        prev = torch.backends.quantized.engine
                        torch.backends.quantized.engine = "fbgemm"
                        try:
                            self._packed = torch.ops.quantized.linear_prepack(qw, None)
                        finally:
                            torch.backends.quantized.engine = prev
                except (RuntimeError, AttributeError, NotImplementedError):
                    self._packed = False
        return self._packed if self._packed is not False else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._flags is None:
            self._flags = (not bool((self.smooth == 1).all()), bool(self.per_token.item()))
        smoothed, per_token = self._flags
        return self.matmul(x / self.smooth if smoothed else x, per_token)

    def matmul(self, x: torch.Tensor, per_token: bool) -> torch.Tensor:
        """The product for an already smoothed input, with one int8 range per token or
        one for the whole call."""
        packed = self._prepack() if x.dtype == torch.float32 else None
        if packed is None:
            return F.linear(x, (self.weight.to(x.dtype) * self.scale[:, None].to(x.dtype)),
                            None if self.bias is None else self.bias.to(x.dtype))
        x = x.contiguous()
        # reduce_range (True): 7-bit activations, so AVX2's int16 pair sums cannot saturate
        if per_token and x.numel() > x.shape[-1]:   # several tokens: each its own range
            amax = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12)
            y = torch.ops.quantized.linear_dynamic(x / amax, packed, True).mul_(amax)
        else:
            y = torch.ops.quantized.linear_dynamic(x, packed, True)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """An embedding lookup from an int8 weight + per-row scale (and the smoothing of the
    output layer it is tied to), sharing those tensors with that layer: stored once."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))
        self.register_buffer("smooth", torch.ones(embedding_dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx].float() * self.scale[idx].unsqueeze(-1) / self.smooth


def quantize_int8(module: nn.Module, skip=(), smooth: dict | None = None, blank: bool = False) -> int:
    """Replace, in place, every nn.Linear (or GPT-2 Conv1D) of `module` by an Int8Linear
    (except those whose qualified name is in `skip`; `smooth` maps names to smoothing
    vectors), and every nn.Embedding whose weight is tied to such a layer by an
    Int8Embedding sharing its tensors. Returns the number of layers replaced. Other
    layers (norms, untied embeddings, convolutions) stay float32. `blank`: the int8 layers
    are made empty on the CPU, for weights loaded next (the float layers may then be on
    the meta device: nothing is read from them)."""
    smooth = smooth or {}
    linears = {n: m for n, m in linear_layers(module).items() if n not in skip}
    if blank:
        new = {n: Int8Linear(float_weight(m).shape[1], float_weight(m).shape[0], m.bias is not None)
               for n, m in linears.items()}
    else:
        new = {n: Int8Linear.from_float(m, smooth.get(n)) for n, m in linears.items()}
    by_weight = {id(m.weight): new[n] for n, m in linears.items()}
    for n, m in module.named_modules():
        if isinstance(m, nn.Embedding) and id(m.weight) in by_weight:
            src = by_weight[id(m.weight)]
            emb = Int8Embedding(m.num_embeddings, m.embedding_dim)
            emb.weight, emb.scale, emb.smooth = src.weight, src.scale, src.smooth   # tied: the same tensors
            new[n] = emb
    for n, m in new.items():
        parent, _, child = n.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, m)
    return len(new)
