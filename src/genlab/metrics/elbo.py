"""Likelihood estimates for VAEs, in nats per image.

`negative_elbo` is the lecture's loss (BCE(sum) + KLD) averaged over images, with one
sample of z per image. `iwae_nll` is the importance-weighted bound of Burda et al. (2016)
with K samples per image: -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x). It is an upper bound
on the true negative log-likelihood that tightens as K grows (K=1 is the negative ELBO in
expectation), so a VAE's NLL is at most the IWAE figure.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.vae import elbo_terms


def _device(model) -> torch.device:
    """Where the model's tensors live (an int8 model holds only buffers)."""
    t = next(model.parameters(), None)
    t = t if t is not None else next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


@torch.no_grad()
def negative_elbo(model, x_u8: torch.Tensor, to_float, batch_size: int = 1000, c=None) -> dict:
    """Mean negative ELBO, BCE and KLD per image over uint8 images `x_u8` (for a
    conditional VAE, `c`: their conditions)."""
    model.eval()
    tot_bce = tot_kld = 0.0
    dev = _device(model)
    for i in range(0, len(x_u8), batch_size):
        x = to_float(x_u8[i:i + batch_size]).to(dev)
        ci = None if c is None else c[i:i + batch_size].to(dev)
        logits, mu, logvar = model(x, ci) if ci is not None else model(x)
        bce, kld = elbo_terms(logits, x, mu, logvar)
        tot_bce += float(bce)
        tot_kld += float(kld)
    n = len(x_u8)
    return {"loss": (tot_bce + tot_kld) / n, "bce": tot_bce / n, "kld": tot_kld / n}


@torch.no_grad()
def iwae_nll(model, x_u8: torch.Tensor, to_float, k: int = 100, batch_size: int | None = None, c=None) -> float:
    """Importance-weighted NLL bound (nats/image) with `k` samples per image (for a
    conditional VAE, of -log p(x | c), `c`: the images' conditions)."""
    model.eval()
    batch_size = batch_size or max(1, 2048 // k)  # ~2k decodes at a time: cache-friendly
    total = 0.0
    dev = _device(model)
    for i in range(0, len(x_u8), batch_size):
        x = to_float(x_u8[i:i + batch_size]).to(dev)
        b = x.shape[0]
        ci = None if c is None else c[i:i + batch_size].to(dev)
        mu, logvar = model.encode(x, ci) if ci is not None else model.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((k,) + mu.shape, device=dev)
        z = mu + eps * std                                           # (k, b, d)
        if ci is None:
            logits = model.decode_logits(z.reshape(k * b, -1))
        else:
            ck = ci.unsqueeze(0).expand(k, *ci.shape).reshape(k * b, *ci.shape[1:])
            logits = model.decode_logits(z.reshape(k * b, -1), ck)
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = -F.binary_cross_entropy_with_logits(logits, xk, reduction="none")
        log_px = log_px.reshape(k, b, -1).sum(-1)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum(-1)
        log_w = log_px + log_pz - log_qz
        total += float(-(torch.logsumexp(log_w, 0) - math.log(k)).sum())
    return total / len(x_u8)
