"""A decoder-only transformer (GPT), in the spirit of nanoGPT's model.py.

    token + position embeddings -> n_layer x [pre-norm causal self-attention, pre-norm MLP]
    -> final LayerNorm -> linear head tied to the token embedding

Attention runs through `F.scaled_dot_product_attention`. Generation keeps a KV cache: each
layer stores the keys and values of the tokens it has seen, so a new token costs one
position's work instead of re-running the whole window. Past the context window, the
window slides: the cache is rebuilt from the most recent three quarters of the window.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256     # context window (tokens)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False        # biases in Linear layers and LayerNorms
    n_inner: int | None = None   # MLP hidden width (None: 4 * n_embd)
    head_dim: int | None = None  # width of one attention head (None: n_embd // n_head)
    # (structured pruning shrinks n_inner and n_head and keeps head_dim)

    def __post_init__(self):
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_inner", "head_dim"):
            v = getattr(self, k)
            if v is not None and int(v) < 1:
                raise ValueError(f"{k} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    @property
    def hidden(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return {"arch": "gpt", **{k: v for k, v in asdict(self).items() if v is not None}}


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Keys and values of every layer for the positions seen so far (batch, head, T, dim),
    preallocated for the whole window: layer i's keys and values are the two halves of one
    tensor kv[i] (2, batch, head, block_size, dim), so a decoder writes both at once."""

    def __init__(self, cfg: GPTConfig, batch: int, device=None, dtype=torch.float32):
        shape = (2, batch, cfg.n_head, cfg.block_size, cfg.hd)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.k = [t[0] for t in self.kv]
        self.v = [t[1] for t in self.kv]
        self.pos = 0  # positions filled


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        inner = cfg.n_head * cfg.hd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * inner, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(inner, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.hd, self.dropout = cfg.n_head, cfg.hd, cfg.dropout

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.hd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.hd).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            p = cache.pos
            cache.k[layer][:, :, p:p + T] = k
            cache.v[layer][:, :, p:p + T] = v
            k, v = cache.k[layer][:, :, :p + T], cache.v[layer][:, :, :p + T]
            if T == 1:      # one new token sees every cached position
                y = F.scaled_dot_product_attention(q, k, v)
            elif p == 0:    # prefill of an empty cache: plain causal attention
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:           # several new tokens after cached ones: causal with an offset
                mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.hd)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, cache: KVCache | None = None, embeds=None):
        """Logits (B, T, vocab) for token ids `idx` (B, T); with `targets` also the mean
        cross-entropy. With a `cache`, `idx` continues the cached positions. `embeds`
        (B, T, n_embd) stands in for idx's token embeddings (to differentiate through them)."""
        tok = self.transformer.wte(idx) if embeds is None else embeds
        B, T = tok.shape[:2]
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.cfg.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=tok.device)
        x = self.transformer.drop(tok + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[int]:
        """Yield `max_new_tokens` new token ids continuing `idx` (1, T), one at a time.
        temperature 0 is greedy decoding. Without the cache, every step re-runs the last
        block_size tokens (the reference the cache must match)."""
        bs = self.cfg.block_size
        ids = idx[0].tolist()
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(torch.tensor([ids[-bs:]], device=idx.device))
            elif cache is None or cache.pos >= bs:
                # (re)fill: the whole prompt first, then after the window is full the most
                # recent three quarters of it (the window slides).
                keep = ids[-bs:] if cache is None else ids[-(3 * bs // 4):]
                cache = KVCache(self.cfg, 1, device=idx.device, dtype=self.transformer.wpe.weight.dtype)
                logits, _ = self(torch.tensor([keep], device=idx.device), cache=cache)
            else:
                logits, _ = self(torch.tensor([[ids[-1]]], device=idx.device), cache=cache)
            nxt = sample_next(logits[0, -1], temperature, top_k, top_p, generator)
            ids.append(nxt)
            yield nxt


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """One token id from a vector of logits (see sample_rows)."""
    return int(sample_rows(logits[None], temperature, top_k, top_p, generator)[0])


def sample_rows(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of logits (B, vocab), as a (B,) tensor on the CPU: greedy at
    temperature 0, else softmax(logits / T) restricted to the top_k most likely tokens and
    to the smallest set whose probability reaches top_p (nucleus sampling)."""
    logits = logits.float()
    if temperature == 0:
        return torch.argmax(logits, dim=-1).cpu()
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        p = torch.softmax(sorted_logits, dim=-1)
        drop = p.cumsum(-1) - p >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0]
