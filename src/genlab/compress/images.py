"""Compressing an image generator (a VAE, a GAN's sampling generator, any ImageRun):
magnitude pruning and int8 of its Linear layers (convolutions stay float), written as a
new run of the same family and measured beside the original: decode latency and the
family's quality (a VAE's test loss, a GAN's FID in the dataset classifier's features)."""
from __future__ import annotations

import copy

import torch

from ..data import ImageData
from ..families import load
from ..metrics.classifier import get_classifier
from ..metrics.elbo import negative_elbo
from ..metrics.images import fid
from ..metrics.quality import train_features
from ..runs import RunDir
from ..util.errors import check
from .lm import count_weights, prepare_out
from .prune import magnitude_prune, sparsity
from .quantize import float_note, int8
from .report import image_rows, write_report


def _calibration(run, g):
    """A callable running the compressed part on calibration inputs: 512 training images
    through a model with an encoder, 512 latents through a generator."""
    target = run.compress_target()
    if hasattr(run.model, "encode"):
        data = run._data()
        x = ImageData.to_float(data.train_x[torch.randperm(len(data.train_x), generator=g)[:512]])
        return (lambda: run.model(x)), "training images"
    z = torch.randn(512, run.latent_dim, generator=g)
    return (lambda: target(z, run._labels(512, None, g))), "latents"


def _quality(run, data, clf, ref, fid_samples: int) -> dict:
    if hasattr(run.model, "encode"):
        return {"test_loss": negative_elbo(run.model, data.test_x, ImageData.to_float)["loss"]}
    return {"fid": fid(ref, clf.features(run.sample(fid_samples, seed=0)))}


def compress_images(src, out, *, prune, quantize, smooth: float, batch: int, timed: bool = True, fid_samples: int,
                    overwrite: bool, log) -> dict:
    orig = load(src)
    quantized = bool(orig.config.get("compress", {}).get("quantize"))
    check(not (quantized and quantize), f"{src}: already quantized to int8; compress the run it came from")
    check(not (quantized and prune), f"{src}: an int8 model cannot be pruned; start from the float run it came from")
    check(isinstance(fid_samples, int) and fid_samples >= 2, f"--fid-samples must be >= 2, not {fid_samples}")
    out = prepare_out(out, src, overwrite)
    model = copy.deepcopy(orig.model)
    work = copy.copy(orig)
    work.model = model
    target = work.compress_target()
    info = {"source": str(orig.path), "source_params": count_weights(target)}
    if prune:
        magnitude_prune(target, prune)
        z, n = sparsity(target)
        log(f"magnitude pruning: {z:,} of {n:,} prunable weights are zero ({z / n:.1%})")
        info["prune"] = {"amount": prune, "structured": False, "zeros": z, "prunable": n, "sparsity": z / n}
    if quantize:
        batches, what = _calibration(work, torch.Generator().manual_seed(0))
        n, pt, kept, later = int8(target, batches, smooth, timed_rows=(1, batch) if timed else None)
        log(f"int8: {n} Linear layers quantized (convolutions stay float32), per-token activations in {pt}; "
            f"smoothing alpha {smooth:g}; calibrated on 512 {what}" + float_note(kept, later))
        info.update(quantize=quantize, smooth_alpha=smooth, per_token_layers=pt, float_layers=kept,
                    int8_slower_on_large_inputs=later)
    run = RunDir(out)
    run.prepare_new(overwrite=overwrite)
    for stale in ("report.json", "report.md"):
        if (run.path / stale).exists():
            (run.path / stale).unlink()
    run.write_config({**orig.config, "compress": {**orig.config.get("compress", {}), **info}})
    run.save_weights(model)
    new = load(out)
    data = orig._data()
    clf = ref = None
    if not hasattr(orig.model, "encode"):
        check(data.train_y is not None and data.num_classes > 1,
              f"{data.name} has no labels, so there is no dataset classifier for the FID")
        clf = get_classifier(data)
        ref = train_features(clf, data)
    log(f"measuring: latency of {'decoding' if hasattr(orig.model, 'encode') else 'generating'} at batch 1 and "
        f"{batch}; " + ("test loss (negative ELBO, nats per image)" if hasattr(orig.model, "encode")
                        else f"FID in the dataset classifier's features ({fid_samples} samples)"))
    entries = []
    for name, r in (("original", orig), ("compressed", new)):
        g = torch.Generator().manual_seed(0)
        decode = (lambda z, r=r, g=g: r._decode(z, r._labels(len(z), None, g)))
        entries.append((name, decode, _quality(r, data, clf, ref, fid_samples), r.path / "model.safetensors",
                        count_weights(r.compress_target())))
    rows = image_rows(entries, orig.latent_dim, batch)
    return write_report(out, rows, {"model": str(src), "family": orig.family, "float_layers": info.get("float_layers", {}),
                                    "int8_slower_on_large_inputs": info.get("int8_slower_on_large_inputs", {})})
