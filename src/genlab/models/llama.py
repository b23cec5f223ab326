"""A lean decoder for Llama-architecture checkpoints (SmolLM2 and any local Llama directory).

transformers' LlamaForCausalLM is general: a dynamic cache object, a mask builder, rotary
tables recomputed per call, attention dispatch, output dataclasses. At batch 1 on a CPU
that Python costs as much as a large share of the arithmetic. `LlamaDecoder` reads the
same modules (so the same safetensors, float32 or genlab's int8 layers) and does only the
arithmetic, in the order transformers does it:

    x = embed(tok)
    per layer:  h = RMSNorm(x); q, k, v = h @ Wq, Wk, Wv     (one fused matmul for int8 layers)
                q, k = rotary(q, k) with cos/sin tables computed once for every position
                cache[:, pos] = k, v                          (a static cache, preallocated)
                x = x + SDPA(q, K, V) @ Wo    (GQA: each key/value head's query heads read as
                                               one block of queries, so K and V are never repeated)
                h = RMSNorm(x); x = x + (silu(h @ Wg) * (h @ Wu)) @ Wd
    logits = RMSNorm(x) @ W_emb.T

Float layers are read in place (nothing copied: the decoder always sees the model's
current weights). int8 layers that share an input (q/k/v, gate/up) are fused into one
int8 matmul, since each int8 call also quantizes its input. Greedy tokens equal
transformers' (tests/test_decode.py, SmolLM2, 200 tokens).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decode import project, residual
from .int8 import Int8Linear


def llama_shaped(model) -> str | None:
    """None when `model` (a transformers causal LM) can use LlamaDecoder, else why not."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return f"a '{getattr(cfg, 'model_type', type(model).__name__)}' model, not Llama"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rotary scaling '{rope.get('rope_type')}'"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "rotary_emb"):
        return "not a plain LlamaForCausalLM (wrapped or adapted)"
    kinds = (nn.Linear, Int8Linear)
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(lin) not in kinds:
                return f"a {type(lin).__name__} layer (LoRA or another adapter: merge it first)"
    if type(model.lm_head) not in kinds:
        return f"a {type(model.lm_head).__name__} output layer"
    return None


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """w * x / sqrt(mean(x^2) + eps), as transformers computes it, in six small kernel calls
    (F.rms_norm's CPU path takes about three times as long for one token)."""
    r = (x * x).mean(-1, keepdim=True).add_(eps).rsqrt_()
    return torch.mul(x, r).mul_(w)


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fuse(lins: list):
    """h -> cat([lin(h) for lin in lins], -1): one int8 matmul when the layers are int8 with
    the same input smoothing and activation ranges, else one call each (float layers are
    never copied)."""
    if Int8Linear.fusable(lins):
        key = tuple((id(m), m.weight._version, m.scale._version) for m in lins)
        hit = _FUSED.get(lins[0])
        if hit is not None and hit[0] == key:   # fused (and fbgemm-packed) once per model
            return hit[1]
        f = Int8Linear.concat(lins)
        _FUSED[lins[0]] = (key, f)
        return f
    calls = [project(m) for m in lins]
    return lambda h: torch.cat([c(h) for c in calls], dim=-1)


class LlamaDecoder:
    """Decode `batch` rows (sharing a position) of a Llama-shaped transformers model, with a
    static cache of `capacity` positions."""

    def __init__(self, model, batch: int = 1, capacity: int | None = None):
        why = llama_shaped(model)
        if why is not None:
            raise ValueError(f"no fast path for this model: {why}")
        cfg, inner = model.config, model.model
        self.batch = batch
        self.H, self.KV = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.C = cfg.hidden_size
        self.scale = self.hd ** -0.5
        self.capacity = int(min(capacity or cfg.max_position_embeddings, cfg.max_position_embeddings))
        self.eps = [float(layer.input_layernorm.variance_epsilon) for layer in inner.layers]
        self.embed = inner.embed_tokens
        dev = model.lm_head.weight.device
        rot = inner.rotary_emb
        freqs = torch.arange(self.capacity, device=dev).float()[:, None] * rot.inv_freq.to(dev).float()[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        half = self.hd // 2
        self.cos = emb.cos() * rot.attention_scaling                     # (capacity, hd)
        sin = emb.sin() * rot.attention_scaling
        self.sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)  # rotate_half as a roll
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight, _fuse([a.q_proj, a.k_proj, a.v_proj]), residual(a.o_proj),
                                layer.post_attention_layernorm.weight, _fuse([m.gate_proj, m.up_proj]),
                                residual(m.down_proj)))
        self.norm_w, self.norm_eps = inner.norm.weight, float(inner.norm.variance_epsilon)
        self.head = project(model.lm_head)
        self.inter = cfg.intermediate_size
        shape = (2, batch, self.KV, self.capacity, self.hd)
        dtype = model.lm_head.weight.dtype if model.lm_head.weight.is_floating_point() else torch.float32
        self.cache = [torch.empty(shape, device=dev, dtype=dtype) for _ in self.layers]  # written before read
        self.pos = 0

    def _rope(self, t: torch.Tensor, p: int, T: int) -> torch.Tensor:
        """Rotary embedding of t (..., T, heads, hd) at positions p .. p+T-1."""
        cos, sin = self.cos[p:p + T, None], self.sin_signed[p:p + T, None]
        return torch.addcmul(t * cos, t.roll(self.hd // 2, dims=-1), sin)

    def _block(self, x: torch.Tensor, T: int) -> torch.Tensor:
        B, H, KV, hd, p = self.batch, self.H, self.KV, self.hd, self.pos
        G = H // KV
        for i, (n1, qkv_proj, o_res, n2, gu_proj, d_res) in enumerate(self.layers):
            qkv = qkv_proj(rms_norm(x, n1, self.eps[i])).view(B, T, H + 2 * KV, hd)
            qk = self._rope(qkv[:, :, :H + KV], p, T)
            kv = self.cache[i]
            kv[0, :, :, p:p + T] = qk[:, :, H:].transpose(1, 2)
            kv[1, :, :, p:p + T] = qkv[:, :, H + KV:].transpose(1, 2)
            keys, values = kv[0, :, :, :p + T], kv[1, :, :, :p + T]
            if T == 1:   # one token: each kv head's G query heads are G "queries" of that head
                y = F.scaled_dot_product_attention(qk[:, 0, :H].reshape(B, KV, G, hd), keys, values)
                y = y.reshape(B, 1, H * hd)
            else:
                q = qk[:, :, :H].transpose(1, 2)
                mask = None if p == 0 else torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(p)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=p == 0, enable_gqa=True)
                y = y.transpose(1, 2).reshape(B, T, H * hd)
            x = o_res(x, y)
            gu = gu_proj(rms_norm(x, n2, self.eps[i]))
            x = d_res(x, F.silu(gu[..., :self.inter]) * gu[..., self.inter:])
        self.pos = p + T
        return x

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Empty the cache and read `ids` (batch, T); the last position's logits (batch, vocab)."""
        T = ids.shape[1]
        if T > self.capacity:
            raise ValueError(f"{T} tokens exceed the cache of {self.capacity}")
        self.pos = 0
        x = self._block(self.embed(ids), T)[:, -1]
        return self.head(rms_norm(x, self.norm_w, self.norm_eps))

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Read one token per row (`tok`: (batch,)); its logits (batch, vocab)."""
        if self.pos >= self.capacity:
            raise ValueError(f"the cache is full ({self.capacity} positions)")
        x = self._block2(self.embed(tok))
        return self.head(rms_norm(x, self.norm_w, self.norm_eps))

    def _block2(self, x: torch.Tensor) -> torch.Tensor:
        """The single-token block on (batch, C) rows (2-D, so residual sums are addmm)."""
        B, H, KV, hd, p = self.batch, self.H, self.KV, self.hd, self.pos
        G = H // KV
        cos, sin = self.cos[p], self.sin_signed[p]
        for i, (n1, qkv_proj, o_res, n2, gu_proj, d_res) in enumerate(self.layers):
            qkv = qkv_proj(rms_norm(x, n1, self.eps[i])).view(B, H + 2 * KV, hd)
            qk = qkv[:, :H + KV]
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), sin)
            kv = self.cache[i]
            kv[0, :, :, p] = qk[:, H:]
            kv[1, :, :, p] = qkv[:, H + KV:]
            att = torch.matmul(qk[:, :H].reshape(B, KV, G, hd), kv[0, :, :, :p + 1].transpose(-1, -2))
            y = torch.matmul(att.mul_(self.scale).softmax(-1), kv[1, :, :, :p + 1])
            x = o_res(x, y.reshape(B, H * hd))
            gu = gu_proj(rms_norm(x, n2, self.eps[i]))
            x = d_res(x, F.silu(gu[:, :self.inter]) * gu[:, self.inter:])
        self.pos = p + 1
        return x
