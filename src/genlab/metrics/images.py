"""Sample-quality metrics computed on feature vectors (N, D).

genlab computes them in the feature space of its own dataset classifier
(metrics/classifier.py), so the numbers are labelled with it, e.g. ``FID[genlab-mnist]``.
They are comparable between runs on the same dataset, *not* with published
Inception-feature FIDs (different network, different feature scale).

- FID (Heusel et al., 2017): Frechet distance between Gaussians fitted to the two
  feature sets: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2).
- KID (Binkowski et al., 2018): unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged
  over random subsets; unbiased, so small sample counts do not inflate it.
- Precision / recall (Kynkaanniemi et al., 2019): the real manifold is the union of
  balls around each real feature reaching its k-th nearest real neighbour; precision is
  the share of generated samples inside it, recall the share of real samples inside the
  generated manifold built the same way. genlab leaves out the balls with the largest
  radii (the top 5%, `OUTLIER_SHARE`), as the same authors' realism score does: an
  outlying sample has a huge k-NN ball that reaches into empty feature space, and one
  such ball can swallow a whole cluster of bad samples. Measured on MNIST: noise images
  collapse onto one point of the classifier's features, and in one classifier of seven
  a single real digit's ball (its radius at the 98.5th percentile) covered that point,
  so uniform noise scored precision 1.0; with the top 5% left out it scores 0.0 in all
  seven, while held-out real digits go from 0.89 to 0.86 (README, "Evaluation").
"""
from __future__ import annotations

import torch

OUTLIER_SHARE = 0.05  # the share of each manifold's largest k-NN balls left out


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of features (N, D)."""
    f = feats.double()
    mu = f.mean(0)
    fc = f - mu
    sigma = fc.T @ fc / max(1, len(f) - 1)
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2).

    Tr((S1 S2)^1/2) = sum of sqrt(eigenvalues of S1^1/2 S2 S1^1/2), a symmetric PSD
    matrix, so the symmetric eigensolver suffices (no complex parts to discard).
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    m = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d = (mu1 - mu2).pow(2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean
    return float(d.clamp_min(0))


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 10, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over subsets)."""
    x, y = real.double(), fake.double()
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=g)[:m]]
        b = y[torch.randperm(len(y), generator=g)[:m]]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
               + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())
        vals.append(float(mmd))
    t = torch.tensor(vals, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(vals) > 1 else 0.0


def _kth_radius(f: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of f to its k-th nearest other row."""
    out = []
    for i in range(0, len(f), chunk):
        dist = torch.cdist(f[i:i + chunk], f)
        out.append(dist.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at 0
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each point: is it within radii[j] of some centre j?"""
    out = []
    for i in range(0, len(points), chunk):
        dist = torch.cdist(points[i:i + chunk], centres)
        out.append((dist <= radii.unsqueeze(0)).any(1))
    return torch.cat(out)


def manifold(f: torch.Tensor, k: int = 3, outliers: float = OUTLIER_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres, radii) of the k-NN manifold estimate of feature set f: a ball around each
    point reaching its k-th nearest neighbour, the `outliers` share with the largest
    radii left out (at least one ball is kept)."""
    radii = _kth_radius(f, k)
    drop = int(outliers * len(f))
    if drop <= 0:
        return f, radii
    keep = radii.argsort()[:max(1, len(f) - drop)]
    return f[keep], radii[keep]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     outliers: float = OUTLIER_SHARE) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifold estimate, largest balls left out)."""
    real, fake = real.float(), fake.float()
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall need more than k={k} samples in each set")
    if not 0 <= outliers < 1:
        raise ValueError(f"outliers must be in [0, 1), not {outliers}")
    precision = float(_inside(fake, *manifold(real, k, outliers)).float().mean())
    recall = float(_inside(real, *manifold(fake, k, outliers)).float().mean())
    return precision, recall


def compare(real: torch.Tensor, other: torch.Tensor, ref_stats=None, k: int = 3, seed: int = 0) -> dict:
    """FID (against `ref_stats` when given, else `real`'s), KID and precision/recall of
    feature set `other` against `real`."""
    mu_r, s_r = ref_stats if ref_stats is not None else gaussian_stats(real)
    kid_mean, kid_std = kid(real, other, seed=seed)
    p, r = precision_recall(real, other, k=k)
    return {"fid": frechet_distance(mu_r, s_r, *gaussian_stats(other)), "kid": kid_mean,
            "kid_std": kid_std, "precision": p, "recall": r}
