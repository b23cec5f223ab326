"""Does an image follow its text? Measured with the dataset classifier and the attributes
genlab puts into captions (data/captions.py).

- conditional accuracy: the share of samples the classifier assigns to the class their
  prompt names (prompts that name none are left out and counted);
- attribute control, per attribute (MNIST thickness, slant, width; Fashion-MNIST size):
  Spearman's rho between the asked level (-1 for "thin", +1 for "thick") and the measured
  value's percentile among the training images of the prompt's class. Two equal groups
  perfectly separated give rho = 0.866 (the asked level has only two values); no control
  gives 0. The mean percentile of each group is reported beside it;
- per-category FID (labelled data whose prompts are captions, e.g. emoji): each
  category's samples against its training images, in the classifier's features.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import ImageData
from ..data.captions import ATTRIBUTES, measure, percentile_in_class
from .images import frechet_distance, gaussian_stats


def prompt_metrics(images: list[torch.Tensor], infos: list[dict], clf, data: ImageData, dataset: str) -> dict:
    """`images[i]`: the samples of prompt i; `infos[i]`: what prompt i asks for (prompt_info)."""
    tag = clf.label
    out: dict = {}
    named = [i for i, inf in enumerate(infos) if inf["class"] is not None]
    out["prompts_naming_a_class"] = len(named)
    if not named:
        return out
    preds = [clf.probs(images[i]).argmax(-1) for i in named]
    hits = torch.cat([(p == infos[i]["class"]).float() for p, i in zip(preds, named)])
    key = "category_accuracy" if dataset not in ("mnist", "fashion-mnist") else "conditional_accuracy"
    out[f"{key}[{tag}]"] = round(float(hits.mean()), 4)
    per_prompt = [float((p == infos[i]["class"]).float().mean()) for p, i in zip(preds, named)]
    out["worst_prompt_accuracy"] = round(min(per_prompt), 4)
    attrs = ATTRIBUTES.get(dataset, {})
    if attrs:
        ref = measure(data.train_x)
        ref_y = data.train_y.numpy()
        measured = {i: measure(images[i]) for i in named if any(infos[i].get(a) is not None for a in attrs)}
        for a, (lo, hi) in attrs.items():
            asked, got = [], []
            for i in named:
                if infos[i].get(a) is None:
                    continue
                v = measured[i][a]
                k = np.full(len(v), infos[i]["class"])
                got.append(percentile_in_class(v, k, ref[a], ref_y))
                asked.append(np.full(len(v), infos[i][a]))
            if not asked:
                continue
            asked_a, got_a = np.concatenate(asked), np.concatenate(got)
            if len(set(asked_a.tolist())) < 2:
                continue
            from scipy.stats import spearmanr  # (scipy's BLAS, loaded at import, changes torch's CPU rounding)
            rho = spearmanr(asked_a, got_a).statistic
            out[f"rho_{a}"] = round(float(rho), 4)
            out[f"{a}_percentile"] = {lo: round(float(got_a[asked_a < 0].mean()), 4),
                                      hi: round(float(got_a[asked_a > 0].mean()), 4)}
    else:
        fids = {}
        for k, cname in enumerate(data.classes):
            idx = [j for j, i in enumerate(named) if infos[i]["class"] == k]
            real = data.train_x[data.train_y == k]
            if not idx or len(real) < 2:
                continue
            fake = torch.cat([images[named[j]] for j in idx])
            if len(fake) < 2:
                continue
            mu_f, s_f = gaussian_stats(clf.features(fake))
            mu_r, s_r = gaussian_stats(clf.features(ImageData.to_float(real)))
            fids[cname] = round(frechet_distance(mu_f, s_f, mu_r, s_r), 3)
        out[f"fid_per_category[{tag}]"] = fids
    return out
