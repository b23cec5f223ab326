"""The style-based generator paper's two measures of a latent space (Karras et al., 2019, §4):

- Perceptual path length: how much the image changes for a tiny step along an
  interpolation path, l = E[d(G(lerp(t)), G(lerp(t + eps))) / eps^2] with eps = 1e-4 --
  slerp in Z, lerp in W; "full" draws t ~ U(0, 1), "end" t in {0, 1}; the 1st and 99th
  percentiles are filtered out. d is LPIPS in the paper; LPIPS weights cannot be fetched
  here, so genlab measures d in its dataset classifier's features, normalised per image as
  LPIPS normalises each layer's (the figures are labelled, e.g. ppl_wend[genlab-mnist]).
- Linear separability: for each attribute (here: each class of the dataset classifier,
  one against the rest), generate images, keep the half the classifier is most sure of,
  fit a linear SVM from the latent (z, or w) to the classifier's label, and measure the
  conditional entropy H(Y | X) of the classifier's label Y given the SVM's side X; report
  exp(sum over attributes of H(Y | X)). Lower = the attributes lie on straighter lines.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..models.stylegan import slerp


def _features(clf, images) -> torch.Tensor:
    return F.normalize(clf.features(images.float().cpu()), dim=1)


@torch.no_grad()
def perceptual_path_length(G, to_image, clf, sampler, space: str = "w", end: bool = False, n: int = 2000,
                           eps: float = 1e-4, batch: int = 100, seed: int = 0) -> float:
    """Perceptual path length of generator G (mapping + synthesis) in `space` ("z" or
    "w"), over n pairs; `sampler(k, generator)` draws (z, c); `to_image` maps synthesis
    output to [0, 1] images; distances in `clf`'s normalised features."""
    if space not in ("z", "w"):
        raise ValueError(f"space must be z or w, not {space}")
    g = torch.Generator().manual_seed(seed)
    dists = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        z0, c = sampler(k, g)
        z1, _ = sampler(k, g)
        t = (torch.randint(0, 2, (k, 1), generator=g).float() if end else torch.rand(k, 1, generator=g)).to(z0.device)
        if space == "z":
            za, zb = slerp(z0, z1, t), slerp(z0, z1, t + eps)
            wa, wb = G.mapping(za, c), G.mapping(zb, c)
        else:
            w0, w1 = G.mapping(z0, c), G.mapping(z1, c)
            wa, wb = torch.lerp(w0, w1, t[:, :, None]), torch.lerp(w0, w1, t[:, :, None] + eps)
        img = to_image(G.synthesis(torch.cat([wa, wb]), noise_mode="const"))
        f = _features(clf, img)
        dists.append(((f[:k] - f[k:]).square().sum(1) / eps ** 2).cpu())
    d = torch.cat(dists).double().numpy()
    lo, hi = np.percentile(d, 1), np.percentile(d, 99)
    return float(d[(d >= lo) & (d <= hi)].mean())


def _conditional_entropy(y: np.ndarray, x: np.ndarray) -> float:
    """H(Y | X) in nats for binary arrays."""
    h = 0.0
    for xv in (0, 1):
        m = x == xv
        if not m.any():
            continue
        p = float(y[m].mean())
        hx = -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)
        h += float(m.mean()) * hx
    return h


@torch.no_grad()
def linear_separability(G, to_image, clf, sampler, n: int = 5000, batch: int = 250, seed: int = 0) -> dict:
    """{"z": separability in Z, "w": in W} with the classifier's classes as attributes."""
    from sklearn.svm import LinearSVC  # heavy (~1 s): only when separability is measured
    g = torch.Generator().manual_seed(seed)
    zs, ws, probs = [], [], []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        z, c = sampler(k, g)
        w = G.mapping(z, c)
        img = to_image(G.synthesis(w, noise_mode="const"))
        zs.append(z.cpu())
        ws.append(w[:, 0].cpu())
        probs.append(clf.probs(img.float().cpu()))
    zs, ws, probs = torch.cat(zs).numpy(), torch.cat(ws).numpy(), torch.cat(probs).numpy()
    out = {}
    for name, lat in (("z", zs), ("w", ws)):
        lat = (lat - lat.mean(0)) / (lat.std(0) + 1e-8)
        total = 0.0
        for k in range(probs.shape[1]):
            p = probs[:, k]
            conf = np.abs(p - 0.5)
            keep = conf >= np.median(conf)                  # the half the classifier is surest of
            y = (p[keep] > 0.5).astype(int)
            if y.min() == y.max():                          # the attribute never (or always) shows
                continue
            svm = LinearSVC(C=1.0, max_iter=5000, dual=True, random_state=seed)
            svm.fit(lat[keep], y)
            total += _conditional_entropy(y, svm.predict(lat[keep]))
        out[name] = math.exp(total)
    return out
