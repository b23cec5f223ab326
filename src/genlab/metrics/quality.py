"""Sample quality of an image generator in one dictionary: FID, KID, precision and recall
in the dataset classifier's features, each beside its real-data floor, class coverage and
the share of samples the classifier recognises; the Inception FID when its weights are
given. What `genlab eval` prints for every image family."""
from __future__ import annotations

import torch

from ..data import ImageData
from .images import compare, fid, gaussian_stats


def train_features(clf, data: ImageData) -> torch.Tensor:
    """The classifier's features of every training image (in chunks of 5,000)."""
    return torch.cat([clf.features(ImageData.to_float(data.train_x[i:i + 5000]))
                      for i in range(0, len(data.train_x), 5000)])


def image_metrics(clf, data: ImageData, samples: torch.Tensor, seed: int = 0, k: int = 3) -> dict:
    """FID/KID/precision/recall of `samples` in `clf`'s features, each beside the
    real-data floor, plus class coverage. The reference is len(samples) training images
    (FID: the statistics of all of them); the floor compares as many held-out test
    images (all of them when there are fewer) with the same reference."""
    n = len(samples)
    g = torch.Generator().manual_seed(seed)
    ref_idx = torch.randperm(len(data.train_x), generator=g)[:n]
    train_feats = train_features(clf, data)
    ref_stats = gaussian_stats(train_feats)
    ref = train_feats[ref_idx]
    test_idx = torch.randperm(len(data.test_x), generator=g)[:n]
    fake = compare(ref, clf.features(samples), ref_stats, k=k, seed=seed)
    floor = compare(ref, clf.features(ImageData.to_float(data.test_x[test_idx])), ref_stats, k=k, seed=seed)
    tag = clf.label
    share = clf.class_share(samples)
    rec = clf.recognised(samples)
    out = {"feature_space": tag, "classifier_test_accuracy": clf.test_accuracy, "n_samples": n,
           "n_real_floor": len(test_idx), "k_nn": k}
    for key, name in (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall")):
        out[f"{name}[{tag}]"] = fake[key]
        out[f"{name}[{tag}] real-data floor"] = floor[key]
    out[f"KID[{tag}] std"] = fake["kid_std"]
    out["FID ratio to floor"] = fake["fid"] / max(floor["fid"], 1e-12)
    out["samples_recognised"] = rec["recognised"]
    out["class_share"] = [round(s, 4) for s in share]
    out["class_share_min"] = min(share)
    out["class_share_max"] = max(share)
    out["classes"] = list(data.classes)
    return out


def inception_fid(inc, data: ImageData, samples: torch.Tensor, seed: int = 0) -> dict:
    """Inception FID (the standard one) of `samples` against as many training images,
    beside the real-data floor (test images)."""
    n = len(samples)
    g = torch.Generator().manual_seed(seed)
    ref_idx = torch.randperm(len(data.train_x), generator=g)[:n]
    test_idx = torch.randperm(len(data.test_x), generator=g)[:n]

    def feats(images):
        return torch.cat([inc(images[i:i + 100]) for i in range(0, len(images), 100)])

    ref = feats(ImageData.to_float(data.train_x[ref_idx]))
    return {"FID[inception]": fid(ref, feats(samples)),
            "FID[inception] real-data floor": fid(ref, feats(ImageData.to_float(data.test_x[test_idx]))),
            "n_inception": n}
