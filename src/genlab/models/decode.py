"""Fast decoding: the generation loop every genlab decoder shares (`decode`), and the one
for genlab's GPT -- a preallocated KV cache and a single-token step that calls PyTorch's
kernels directly (models/llama.py has the one for Llama-shaped checkpoints).

`GPT.generate` (model.py style, in gpt.py) is the reference: readable, one module call per
layer and per sub-layer, about a hundred small kernel calls per token. At 0.8M parameters
the arithmetic of a token is tiny, so that Python and dispatch overhead *is* the cost.
`GPTDecoder.step` does the same arithmetic with as few calls as the maths allows:

    x = wte[tok] + wpe[pos]
    per layer:  h = LN(x); q, k, v = h @ W_qkv (one matmul, viewed, never copied)
                cache[:, pos] = k, v (one copy into the preallocated cache)
                x = x + SDPA(q, K[:pos+1], V[:pos+1]) @ W_o      (addmm: product and sum at once)
                x = x + gelu(LN(x) @ W_fc) @ W_proj              (addmm again)
    logits = LN(x) @ wte.T

It decodes `batch` sequences at once (one row each; they share a position, as they do
when sampling several continuations of one prompt), slides the window exactly as the
reference does (refilled with the most recent three quarters of it), and gives the same
tokens as the reference path (tests/test_decode.py: greedy and seeded sampling).
Layers that are not plain nn.Linear (genlab's Int8Linear after compression) are called as
modules. `torch.compile` of the step was measured too (benchmarks/decode.py --compile): on
this 2-core CPU it compiles for seconds (6.6 s cold) and then decodes about 12% slower than
this eager step (2,243 vs 2,549 tokens/s), so it is not used.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import GPT, KVCache, sample_rows


def project(lin: nn.Module):
    """h -> lin(h), calling the kernel directly for a plain Linear (any other layer, such as
    genlab's Int8Linear, is called as a module)."""
    if type(lin) is nn.Linear:
        w, b = lin.weight, lin.bias
        return lambda h: F.linear(h, w, b)
    return lin


def residual(lin: nn.Module):
    """(x, h) -> x + lin(h): one addmm for a plain Linear without bias on 2-D rows (a
    decode step); the sum of the product otherwise."""
    if type(lin) is nn.Linear and lin.bias is None:
        w = lin.weight
        wt = w.t()
        return lambda x, h: torch.addmm(x, h, wt) if x.dim() == 2 else x + F.linear(h, w)
    return lambda x, h: x + lin(h)


def _norm(ln: nn.Module):
    w, b = ln.weight, ln.bias
    shape = tuple(w.shape)
    return lambda x: F.layer_norm(x, shape, w, b, 1e-5)


class GPTDecoder:
    """Decode `batch` sequences of `model` (a genlab GPT, eval mode) token by token."""

    def __init__(self, model: GPT, batch: int = 1):
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.model, self.batch, cfg = model, batch, model.cfg
        self.block, self.H, self.hd = cfg.block_size, cfg.n_head, cfg.hd
        tr = model.transformer
        self.wte, self.wpe = tr.wte, tr.wpe.weight
        emb = tr.wte.weight
        self.embed = (lambda t: F.embedding(t, emb)) if type(tr.wte) is nn.Embedding else tr.wte  # int8: its module
        self.layers = [(_norm(b.ln_1), project(b.attn.c_attn), residual(b.attn.c_proj),
                        _norm(b.ln_2), project(b.mlp.c_fc), residual(b.mlp.c_proj)) for b in tr.h]
        self.ln_f, self.head = _norm(tr.ln_f), project(model.lm_head)
        self.kv_cache = KVCache(cfg, batch, device=self.wpe.device, dtype=self.wpe.dtype)
        self.cache = self.kv_cache.kv   # one (2, batch, head, block_size, dim) tensor per layer

    @property
    def pos(self) -> int:
        return self.kv_cache.pos

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Empty the cache and read `ids` (batch, T) through the model's own forward (one
        batched pass); the logits (batch, vocab) of the last position."""
        self.kv_cache.pos = 0
        logits, _ = self.model(ids, cache=self.kv_cache)
        return logits[:, -1]

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Read one token per row (`tok`: (batch,) ids) at the next position; its logits
        (batch, vocab)."""
        B, H, hd, p = self.batch, self.H, self.hd, self.kv_cache.pos
        if p >= self.block:
            raise ValueError(f"the cache is full ({self.block} positions): prefill a shorter window")
        x = self.embed(tok) + self.wpe[p]
        for kv, (ln1, qkv_proj, attn_out, ln2, fc, mlp_out) in zip(self.cache, self.layers):
            qkv = qkv_proj(ln1(x)).view(B, 3, H, 1, hd)
            kv[:, :, :, p:p + 1] = qkv[:, 1:].transpose(0, 1)
            y = F.scaled_dot_product_attention(qkv[:, 0], kv[0, :, :, :p + 1], kv[1, :, :, :p + 1])
            x = attn_out(x, y.view(B, H * hd))
            x = mlp_out(x, F.gelu(fc(ln2(x))))
        self.kv_cache.pos = p + 1
        return self.head(self.ln_f(x))


@torch.inference_mode()
def decode(dec, ids: list, max_new_tokens: int, window: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> Iterator[list]:
    """Yield, `max_new_tokens` times, the next token id of each of the decoder's `batch`
    continuations of the prompt `ids` (a list of `batch` ints per step). `dec` has
    prefill(ids (batch, T)) and step(tok (batch,)), both returning the last logits, and
    `pos`. The window (`window` tokens) slides as in `GPT.generate`: once the cache is full
    it is refilled with the most recent three quarters of the window."""
    dev = dec.cache[0].device
    seq = torch.tensor(list(ids)[-window:], dtype=torch.long, device=dev).expand(dec.batch, -1)
    logits = dec.prefill(seq)
    recent = []   # the tokens since the last (pre)fill, one (batch,) tensor each
    for i in range(max_new_tokens):
        nxt = sample_rows(logits, temperature, top_k, top_p, generator).to(dev)
        yield nxt.tolist()
        if i + 1 == max_new_tokens:
            return
        recent.append(nxt)
        if dec.pos >= window:
            seq = torch.cat([seq, torch.stack(recent, 1)], dim=1)[:, -(3 * window // 4):]
            recent = []
            logits = dec.prefill(seq)
        else:
            logits = dec.step(nxt)


def decode_gpt(model: GPT, ids: list, max_new_tokens: int, batch: int = 1, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> Iterator[list]:
    """`decode` with a GPTDecoder of `model`: `batch` continuations of `ids`, step by step."""
    return decode(GPTDecoder(model, batch), ids, max_new_tokens, model.cfg.block_size, temperature,
                  top_k, top_p, generator)
