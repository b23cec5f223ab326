"""VAE training on real MNIST: the loss falls, the CLI prints the lecture's lines, the run
directory is complete, and training is repeatable bit for bit -- same seed, reload,
resume at an epoch boundary, resume after a time budget stopped it inside an epoch."""
from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
import genlab.families.vae
from genlab.models.vae import VAEConfig, build_vae

LINE = re.compile(r"^Epoch (\d+), Loss: (\d+\.\d{4})", re.M)


def _epoch_records(run_path):
    recs = [json.loads(s) for s in (run_path / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [r for r in recs if r.get("kind") == "epoch"]


def _quiet():
    lines: list[str] = []
    return lines, dict(progress=False, log=lines.append)


# -- one 2-epoch run through the CLI ---------------------------------------------------------

def test_cli_prints_the_lectures_epoch_lines(trained_cli_run, trained_run):
    out = trained_cli_run.stdout
    assert re.search(r"^Epoch 1, Loss: \d+\.\d{4}", out, re.M), out
    assert re.search(r"^Epoch 2, Loss: \d+\.\d{4}, Test loss: \d+\.\d{4}$", out, re.M), out
    printed = LINE.findall(out)
    assert [int(e) for e, _ in printed] == [1, 2]
    # the printed numbers are the logged ones (summed loss / images, 4 decimals)
    recs = _epoch_records(trained_run)
    assert [v for _, v in printed] == [f"{r['train_loss']:.4f}" for r in recs]
    assert "\r" not in out  # no progress bar: stdout is not a terminal
    assert "Traceback" not in trained_cli_run.stderr


def test_loss_falls_on_real_mnist(trained_run):
    e1, e2 = _epoch_records(trained_run)
    assert (e1["epoch"], e2["epoch"]) == (1, 2)
    assert "partial" not in e1 and "partial" not in e2
    # the lecture's model: ~164 after epoch 1, ~121 after epoch 2 (train), test ~115
    assert 100 < e1["train_loss"] < 200
    assert e2["train_loss"] < e1["train_loss"]
    assert e2["test_loss"] < e1["test_loss"]
    assert e2["test_loss"] < 140
    for r in (e1, e2):
        assert r["test_loss"] == pytest.approx(r["test_bce"] + r["test_kld"], rel=1e-9)
        assert r["test_kld"] > 0


def test_run_directory_contents(trained_run):
    for name in ("config.json", "model.safetensors", "state.pt", "metrics.jsonl", "loss.png",
                 "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (trained_run / name).is_file(), name
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["family"] == "vae"
    assert cfg["model"] == {"arch": "mlp", "channels": 1, "image_size": 28, "latent_dim": 20,
                            "hidden": 400, "width": 32}
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["seed"] == 0
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["batch_size"] == 128 and cfg["train"]["beta"] == 1.0
    assert cfg["data"]["dataset"] == "mnist" and cfg["data"]["classes"] == [str(i) for i in range(10)]
    # config.json is enough to rebuild the model the weights belong to
    model = build_vae(VAEConfig(**cfg["model"]))
    genlab.runs.RunDir(trained_run).load_weights(model)
    # sample grids: 64 fixed latents, 8 x 8 tiles of 28 px + 2 px padding, drawn at 2x
    with Image.open(trained_run / "samples" / "epoch_001.png") as im:
        assert im.format == "PNG" and im.size == (484, 484) and im.mode == "L"
        g1 = np.asarray(im)
    with Image.open(trained_run / "samples" / "epoch_002.png") as im:
        g2 = np.asarray(im)
    assert not np.array_equal(g1, g2)  # the model changed between the epochs
    assert g1.std() > 20               # not a blank picture
    with Image.open(trained_run / "loss.png") as im:
        assert im.format == "PNG" and im.size[0] >= 300


def test_the_mlp_is_the_lectures_model(trained_run):
    shapes = {k: tuple(v.shape) for k, v in genlab.load(trained_run).model.state_dict().items()}
    assert shapes == {"fc1.weight": (400, 784), "fc1.bias": (400,),
                      "fc21.weight": (20, 400), "fc21.bias": (20,),
                      "fc22.weight": (20, 400), "fc22.bias": (20,),
                      "fc3.weight": (400, 20), "fc3.bias": (400,),
                      "fc4.weight": (784, 400), "fc4.bias": (784,)}


# -- repeatability -----------------------------------------------------------------------------

def test_same_seed_gives_bit_identical_weights(trained_run, tmp_path, assert_same_weights):
    """The CLI run and an API run with the same seed: the same weights, bit for bit."""
    out = tmp_path / "again"
    _, kw = _quiet()
    genlab.train("vae", dataset="mnist", epochs=2, seed=0, out=out, **kw)
    assert_same_weights(out, trained_run)
    assert [r["train_loss"] for r in _epoch_records(out)] == [r["train_loss"] for r in _epoch_records(trained_run)]
    assert (out / "samples" / "epoch_002.png").read_bytes() == \
        (trained_run / "samples" / "epoch_002.png").read_bytes()


def test_resume_at_an_epoch_boundary_is_bit_exact(one_epoch_run, trained_run, tmp_path, monkeypatch,
                                                   assert_same_weights):
    """1 epoch, then resume to 2 == 2 epochs uninterrupted; and the model in memory at the
    end of training is exactly what Run.load rebuilds from the checkpoint."""
    out = tmp_path / "resumed"
    shutil.copytree(one_epoch_run.path, out)
    built = []
    real_build = genlab.families.vae.build_vae
    monkeypatch.setattr(genlab.families.vae, "build_vae", lambda cfg: built.append(real_build(cfg)) or built[-1])
    lines, kw = _quiet()
    genlab.train("vae", out=out, resume=True, epochs=2, **kw)
    assert_same_weights(out, trained_run)
    assert [int(e) for e, _ in LINE.findall("\n".join(lines))] == [2]  # only epoch 2 was trained
    assert [r["epoch"] for r in _epoch_records(out)] == [1, 2]
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2
    in_memory = built[0].state_dict()
    reloaded = genlab.Run.load(out).model.state_dict()
    assert in_memory.keys() == reloaded.keys()
    assert all(torch.equal(in_memory[k], reloaded[k]) for k in in_memory)


def test_resume_of_a_finished_run_changes_nothing(run_copy, snapshot):
    before = snapshot(run_copy)
    lines, kw = _quiet()
    genlab.train("vae", out=run_copy, resume=True, epochs=2, **kw)
    assert any("nothing to do" in s for s in lines)
    after = snapshot(run_copy)
    for name in ("model.safetensors", "state.pt", "metrics.jsonl", "config.json"):
        assert after[name] == before[name], name


# -- time budget -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, mnist):
    """epochs=2 but a 0.3 s time budget: stops inside an epoch (and saves)."""
    path = tmp_path_factory.mktemp("budget") / "run"
    lines, kw = _quiet()
    run = genlab.train("vae", dataset="mnist", epochs=2, time_budget=0.3, seed=0, out=path, **kw)
    return SimpleNamespace(path=path, run=run, log=lines)


def test_time_budget_stops_inside_an_epoch_and_leaves_a_usable_run(budget_run):
    assert budget_run.run.summary["stopped"] == "time budget"
    state = torch.load(budget_run.path / "state.pt", weights_only=True)
    assert state["step"] > 0, "the budget should end training inside an epoch"
    last = _epoch_records(budget_run.path)[-1]
    assert 0 < last["partial"] < 1
    assert re.search(r"^Epoch \d+, Loss: \d+\.\d{4}, Test loss: \d+\.\d{4}  \(stopped \d+% into the epoch\)$",
                     "\n".join(budget_run.log), re.M), budget_run.log
    assert any("time budget" in s and "--resume" in s for s in budget_run.log)
    images = genlab.load(budget_run.path).sample(4, seed=0)
    assert images.shape == (4, 1, 28, 28)


def test_resume_after_a_mid_epoch_stop_is_bit_exact(budget_run, trained_run, tmp_path, assert_same_weights):
    out = tmp_path / "resumed"
    shutil.copytree(budget_run.path, out)
    _, kw = _quiet()
    run = genlab.train("vae", out=out, resume=True, epochs=2, time_budget=1e9, **kw)
    assert run.summary["stopped"] is None and run.summary["epochs"] == 2
    assert_same_weights(out, trained_run)
    full = [r for r in _epoch_records(out) if "partial" not in r]
    assert [(r["epoch"], r["train_loss"], r["test_loss"]) for r in full] == \
        [(r["epoch"], r["train_loss"], r["test_loss"]) for r in _epoch_records(trained_run)]


def test_resume_to_more_epochs_after_a_time_budget(budget_run, trained_run, tmp_path, assert_same_weights):
    """`resume=True, epochs=2` (the CLI's `--resume --epochs 2`) after a time-budget stop
    trains on to epoch 2 -- the same weights as 2 epochs uninterrupted -- and logs each
    epoch once."""
    out = tmp_path / "resumed"
    shutil.copytree(budget_run.path, out)
    n_before = len(_epoch_records(out))
    _, kw = _quiet()
    genlab.train("vae", out=out, resume=True, epochs=2, **kw)
    recs = _epoch_records(out)
    assert len(recs) > n_before and recs[-1]["epoch"] == 2 and "partial" not in recs[-1], recs
    assert_same_weights(out, trained_run)


def test_conv_vae_trains_for_a_time_budget(tmp_path):
    out = tmp_path / "conv"
    lines, kw = _quiet()
    run = genlab.train("vae", dataset="mnist", arch="conv", time_budget=3, seed=0, out=out, **kw)
    assert run.summary["stopped"] == "time budget" and run.summary["wall_seconds"] >= 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["arch"] == "conv" and cfg["model"]["latent_dim"] == 32
    assert cfg["train"]["schedule"] == "cosine" and cfg["train"]["epochs"] is None
    assert "enc.0.weight" in genlab.load(out).model.state_dict()
    rec = _epoch_records(out)[-1]
    # it learned something: 784 * ln 2 = 543 nats is the loss of predicting grey everywhere
    assert rec["test_loss"] < 543
    x = run.sample(6, seed=0)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    run.save_samples(6, out / "s.npy", seed=0)
    assert np.load(out / "s.npy").shape == (6, 28, 28)


@pytest.mark.slow
def test_lecture_result_after_ten_epochs(tmp_path, classifier):
    """The lecture's full recipe (10 epochs): the test loss reaches the lecture's ~104 nats,
    the IWAE bound is tighter still, and most samples are recognisable digits."""
    out = tmp_path / "lecture"
    lines, kw = _quiet()
    run = genlab.train("vae", dataset="mnist", epochs=10, seed=0, out=out, **kw)
    recs = _epoch_records(out)
    assert [r["epoch"] for r in recs] == list(range(1, 11))
    losses = [r["train_loss"] for r in recs]
    assert all(b < a for a, b in zip(losses, losses[1:]))  # falls every epoch
    assert recs[-1]["test_loss"] < 108
    res = run.evaluate(iw_samples=50, n_test=2000, n_samples=1000)
    assert res["test_iwae_nll_k50"] < res["test_neg_elbo"] - 2
    vae_share = res["samples_recognised"]
    noise = classifier.recognised(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert vae_share > noise["recognised"] + 0.2
