"""FID / KID / precision-recall: against closed forms and scipy, then on real MNIST in the
dataset classifier's features (what the numbers mean: a floor for real data, recall that
falls when classes are dropped, precision that falls for noise)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from genlab.api import image_metrics
from genlab.data import ImageData
from genlab.metrics.images import fid, frechet_distance, gaussian_stats, kid, precision_recall


def _spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_scipy_sqrtm():
    s1, s2 = _spd(12, 1), _spd(12, 2)
    mu1 = torch.arange(12, dtype=torch.float64) / 10
    mu2 = torch.zeros(12, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    v1 = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    v2 = torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([3.0, 0.0, 4.0])
    # |mu1-mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2 = 25 + (1 + 1 + 4)
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(31.0)
    assert frechet_distance(mu1, torch.diag(v1), mu1, torch.diag(v1)) == pytest.approx(0.0, abs=1e-9)


def test_fid_kid_pr_on_gaussian_samples():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 8, generator=g)
    b = torch.randn(3000, 8, generator=g)
    shifted = b + 1.0
    assert fid(a, b) < 0.05 < 7.5 < fid(a, shifted) < 8.5       # |shift|^2 = 8
    k_same, k_std = kid(a, b)
    k_shift, _ = kid(a, shifted)
    assert abs(k_same) < max(3 * k_std, 1e-3) and k_shift > 50 * max(abs(k_same), 1e-4)
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8    # (the 5% largest balls are left out: ~0.86 here, 0.90 with all)
    p, r = precision_recall(a, b + 10.0)
    assert p == 0.0 and r == 0.0
    # a generator that covers only half of the real distribution: precision stays, recall falls
    half = b[b[:, 0] > 0]
    p, r = precision_recall(a, half)
    assert p > 0.8 and r < 0.7


def test_precision_is_not_fooled_by_one_real_outlier():
    """A real outlier's k-NN ball is huge; a collapsed cluster of bad samples that lands
    in it must not count as precise (what made noise score 1.0 on one MNIST classifier)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 8, generator=g) * 0.1 + 10.0            # a tight real cluster ...
    real[0] = 0.0                                                     # ... and one outlier
    real[1:4] = torch.full((3, 8), 3.0)                               # (its far neighbours)
    fake = torch.randn(2000, 8, generator=g) * 0.01 + 0.5             # bad samples, collapsed
    p_all, _ = precision_recall(real, fake, outliers=0.0)
    p, r = precision_recall(real, fake)
    assert p_all == 1.0 and p == 0.0 and r == 0.0
    with pytest.raises(ValueError):
        precision_recall(real, fake, outliers=1.0)


def test_stats_and_errors():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(1))
    mu, sigma = gaussian_stats(x)
    assert torch.allclose(sigma, torch.from_numpy(np.cov(x.double().numpy(), rowvar=False)))
    with pytest.raises(ValueError):
        precision_recall(x[:3], x[:3])
    with pytest.raises(ValueError):
        kid(x[:1], x[:1])


def test_real_mnist_floor_and_what_the_metrics_detect(mnist, classifier):
    """Held-out real digits sit at the floor; digits from half the classes keep their
    precision but lose recall and coverage; noise, sparse noise, blank and scrambled
    images fail every metric -- in the features of a classifier trained in this run."""
    tag = classifier.label
    # (a random subset: MNIST's test set is ordered by writer population, first the
    # Census employees, then the students -- its first 2,000 images are measurably shifted)
    idx = torch.randperm(len(mnist.test_x), generator=torch.Generator().manual_seed(1))[:2000]
    test = ImageData.to_float(mnist.test_x[idx])
    real = image_metrics(classifier, mnist, test, seed=0)
    assert real[f"FID[{tag}]"] < 2 * real[f"FID[{tag}] real-data floor"] + 0.2
    assert real[f"precision[{tag}]"] > 0.8 and real[f"recall[{tag}]"] > 0.8
    assert 0.07 < real["class_share_min"] and real["class_share_max"] < 0.13

    low = mnist.test_x[mnist.test_y < 5][:2000]
    half = image_metrics(classifier, mnist, ImageData.to_float(low), seed=0)
    assert half[f"FID[{tag}]"] > 20 * real[f"FID[{tag}]"]
    assert half[f"precision[{tag}]"] > 0.8 and half[f"recall[{tag}]"] < 0.7
    assert sum(half["class_share"][5:]) < 0.02

    g = torch.Generator().manual_seed(0)
    shape = (2000, 1, 28, 28)
    non_images = {
        "noise": torch.rand(shape, generator=g),
        "sparse noise": (torch.rand(shape, generator=g) < 0.2).float(),
        "blank": torch.rand((2000, 1, 1, 1), generator=g).expand(shape).contiguous(),
        "scrambled": test.flatten(1)[:, torch.randperm(784, generator=g)].view(shape),
    }
    for name, x in non_images.items():
        bad = image_metrics(classifier, mnist, x, seed=0)
        assert bad[f"FID[{tag}]"] > 3 * half[f"FID[{tag}]"], name
        assert bad[f"precision[{tag}]"] < 0.05 and bad["samples_recognised"] < 0.05, name


def test_classifier_training_is_reproducible(mnist):
    """The same seed gives the same classifier, bit for bit, whatever the caller's RNG
    state (the initial weights once came from it: one classifier in seven then let noise
    score precision 1.0)."""
    from genlab.metrics.classifier import train_classifier
    small = ImageData("mnist", mnist.train_x[:6000], mnist.train_y[:6000], mnist.test_x[:1000],
                      mnist.test_y[:1000], mnist.classes)
    nets = []
    for state in (1, 2):
        torch.manual_seed(state)
        nets.append(train_classifier(small, epochs=1).net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    other = train_classifier(small, epochs=1, seed=1).net.state_dict()
    assert not all(torch.equal(nets[0][k], other[k]) for k in nets[0])
