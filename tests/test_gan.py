"""GANs on real MNIST: the lecture's networks and training step exactly, short runs whose
losses behave like a GAN's and whose samples a classifier recognises, sampling,
interpolation, evaluation, bit-exact resume, and one clear line for each bad input."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.optim as optim
from safetensors.torch import load_file

import genlab
from genlab.data import ImageData
from genlab.errors import GenlabError
from genlab.models.gan import GANConfig, build_gan
from genlab.train.gan import GANTask, to_signed

# -- the lecture's code, verbatim (lecture: "GAN Example") ------------------------------------

class Discriminator(nn.Module):
    def __init__(self):
        super(Discriminator, self).__init__()
        self.fc = nn.Sequential(
            nn.Linear(784, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 1),
            nn.Sigmoid()
        )

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.fc(x)


class Generator(nn.Module):
    def __init__(self):
        super(Generator, self).__init__()
        self.fc = nn.Sequential(
            nn.Linear(100, 256),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(256),
            nn.Linear(256, 256),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(256),
            nn.Linear(256, 784),
            nn.Tanh()
        )

    def forward(self, x):
        return self.fc(x)


def test_lecture_networks_exactly():
    ours = build_gan(GANConfig(arch="mlp"))
    lec_g, lec_d = Generator(), Discriminator()
    assert repr(ours.G.fc) == repr(lec_g.fc) and repr(ours.D.fc) == repr(lec_d.fc)
    ours.G.load_state_dict(lec_g.state_dict())   # same names, same shapes
    ours.D.load_state_dict(lec_d.state_dict())
    ours.eval(), lec_g.eval(), lec_d.eval()
    z = torch.randn(8, 100)
    with torch.no_grad():
        img = ours.G(z)
        assert img.shape == (8, 1, 28, 28)
        assert torch.equal(img.view(8, -1), lec_g(z))
        assert torch.equal(ours.D(img), lec_d(img.view(8, -1)))
    assert ours.G_ema is None


def test_lecture_training_step_exactly(mnist):
    """One genlab iteration (--arch mlp --loss bce) = one iteration of the lecture's loop."""
    torch.manual_seed(0)
    lec_g, lec_d = Generator(), Discriminator()
    ours = build_gan(GANConfig(arch="mlp"))
    ours.G.load_state_dict(lec_g.state_dict())
    ours.D.load_state_dict(lec_d.state_dict())
    task = GANTask(ours, mnist, loss="bce", lr_g=2e-4, lr_d=2e-4, betas=(0.9, 0.999), ema_decay=0.0)
    x = to_signed(mnist.train_x[:100])
    for _ in range(3):
        # the lecture's loop body, verbatim (Variable is a no-op in today's torch)
        torch.manual_seed(1)
        criterion = nn.BCELoss()
        if not hasattr(lec_d, "opt"):
            lec_d.opt = optim.Adam(lec_d.parameters(), lr=2e-4)
            lec_g.opt = optim.Adam(lec_g.parameters(), lr=2e-4)
        d_optimizer, g_optimizer = lec_d.opt, lec_g.opt
        current_batch_size = x.size(0)
        real_images = x.view(current_batch_size, -1)
        real_labels = torch.ones(current_batch_size, 1)
        fake_labels = torch.zeros(current_batch_size, 1)
        outputs = lec_d(real_images)
        d_loss_real = criterion(outputs, real_labels)
        z = torch.randn(current_batch_size, 100)
        fake_images = lec_g(z)
        outputs = lec_d(fake_images)
        d_loss_fake = criterion(outputs, fake_labels)
        d_loss = d_loss_real + d_loss_fake
        d_optimizer.zero_grad()
        g_optimizer.zero_grad()
        d_loss.backward()
        d_optimizer.step()
        z = torch.randn(current_batch_size, 100)
        fake_images = lec_g(z)
        outputs = lec_d(fake_images)
        g_loss = criterion(outputs, real_labels)
        d_optimizer.zero_grad()
        g_optimizer.zero_grad()
        g_loss.backward()
        g_optimizer.step()

        torch.manual_seed(1)
        ours_d_loss = task.train_step(x, None) / current_batch_size
        assert float(ours_d_loss) == pytest.approx(d_loss.item(), rel=1e-5)
    for name, (a, b) in {"G": (ours.G, lec_g), "D": (ours.D, lec_d)}.items():
        sa, sb = a.state_dict(), b.state_dict()
        for k in sb:
            assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6, rtol=1e-5), f"{name}.{k}"


# -- short real runs -----------------------------------------------------------------------------

def _train_cli(tmp_path_factory, cli, name, *args):
    path = tmp_path_factory.mktemp("runs") / name
    r = cli("train", "gan", *args, "--seed", 0, "--out", path, "--no-progress")
    assert r.returncode == 0, f"training failed:\n{r.stdout}\n{r.stderr}"
    return type("R", (), {"path": path, "stdout": r.stdout, "stderr": r.stderr})


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory, mnist, classifier, cli):
    """genlab's default recipe (class-conditional sngan) for one epoch on MNIST, via the CLI."""
    return _train_cli(tmp_path_factory, cli, "sngan-1ep", "--dataset", "mnist", "--epochs", 1)


@pytest.fixture(scope="session")
def lecture_gan_run(tmp_path_factory, mnist, classifier, cli):
    """The lecture's GAN, 3 epochs on MNIST, via the CLI."""
    return _train_cli(tmp_path_factory, cli, "mlp-3ep", "--arch", "mlp", "--epochs", 3)


def _epochs(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("kind") == "epoch"]


def test_gan_run_prints_and_writes(gan_run):
    lines = [ln for ln in gan_run.stdout.splitlines() if ln.startswith("Epoch")]
    assert len(lines) == 1
    assert all(k in lines[0] for k in ("D loss:", "G loss:", "D(x):", "D(G(z)):", "FID[genlab-mnist]"))
    files = {p.relative_to(gan_run.path).as_posix() for p in gan_run.path.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "state.pt", "metrics.jsonl", "loss.png",
            "samples/epoch_001.png"} <= files
    cfg = json.loads((gan_run.path / "config.json").read_text())
    assert cfg["family"] == "gan" and cfg["model"]["arch"] == "sngan"
    assert cfg["model"]["num_classes"] == 10 and cfg["model"]["ema"] is True
    assert cfg["train"]["loss"] == "hinge" and cfg["train"]["lr_d"] == 4e-4
    w = load_file(str(gan_run.path / "model.safetensors"))
    assert any(k.startswith("G_ema.") for k in w) and any(k.startswith("D.") for k in w)
    rec = _epochs(gan_run.path)[0]
    assert {"d_loss", "g_loss", "d_real", "d_fake", "class_share", "fid_2000", "iterations"} <= set(rec)
    assert rec["iterations"] == math.ceil(60000 / 64)


def test_losses_move_as_a_gans_should(gan_run, lecture_gan_run):
    # The lecture's GAN: D better than chance (BCE sum < 2 ln 2) but G keeps fooling it at times.
    recs = _epochs(lecture_gan_run.path)
    assert len(recs) == 3
    for r in recs:
        assert 0.01 < r["d_loss"] < 2 * math.log(2)
        assert r["g_loss"] > math.log(2)                    # D(G(z)) < 1/2 on average
        assert r["d_real"] > 0.5 > r["d_fake"] > 1e-3
    # genlab's recipe (hinge loss): neither side wins outright after an epoch.
    r = _epochs(gan_run.path)[0]
    assert 0.2 < r["d_loss"] < 2.0                          # hinge: 2.0 = D no better than chance
    assert 0.5 < r["d_real"] < 0.95 and 0.05 < r["d_fake"] < 0.5
    assert r["d_real"] > r["d_fake"]


def test_samples_recognised_better_than_noise(gan_run, classifier, mnist):
    run = genlab.load(gan_run.path)
    samples = run.sample(1000, seed=0)
    assert samples.shape == (1000, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    noise = classifier.recognised(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    rec = classifier.recognised(samples)
    assert rec["recognised"] > noise["recognised"] + 0.4
    assert min(rec["class_share"]) > 0.04 and max(rec["class_share"]) < 0.18
    # the per-epoch FID fell far below an untrained generator's
    torch.manual_seed(0)
    untrained = build_gan(GANConfig(**json.loads((gan_run.path / "config.json").read_text())["model"])).eval()
    with torch.no_grad():
        z = torch.randn(2000, 100)
        y = torch.arange(2000) % 10
        raw = untrained.generate(z, y)
    from genlab.metrics.images import fid
    real = classifier.features(ImageData.to_float(mnist.train_x[:2000]))
    assert _epochs(gan_run.path)[0]["fid_2000"] < 0.3 * fid(real, classifier.features(raw))


def test_class_conditional_sampling(gan_run, classifier, cli, tmp_path):
    run = genlab.load(gan_run.path)
    sevens = run.sample(200, seed=1, label=7)
    assert classifier.class_share(sevens)[7] > 0.8
    assert torch.equal(run.sample(200, seed=1, label="7"), sevens)  # by name or by index
    r = cli("sample", gan_run.path, "--n", 16, "--class", 3, "--seed", 0, "--out", tmp_path / "threes.npy")
    assert r.returncode == 0, r.stderr
    arr = np.load(tmp_path / "threes.npy")
    assert arr.shape == (16, 28, 28) and arr.dtype == np.float32
    assert classifier.class_share(torch.from_numpy(arr)[:, None])[3] > 0.6


def test_sample_and_interpolate_cli(gan_run, cli, tmp_path):
    for name in ("a", "b"):
        r = cli("sample", gan_run.path, "--n", 12, "--seed", 5, "--out", tmp_path / f"{name}.npy")
        assert r.returncode == 0, r.stderr
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (12, 28, 28) and np.array_equal(a, b)          # same seed, same images
    r = cli("sample", gan_run.path, "--n", 12, "--seed", 6, "--out", tmp_path / "c.npy")
    assert not np.array_equal(a, np.load(tmp_path / "c.npy"))
    r = cli("sample", gan_run.path, "--n", 16, "--out", tmp_path / "grid.png")
    assert r.returncode == 0 and (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("interpolate", gan_run.path, "--pairs", 3, "--steps", 5, "--out", tmp_path / "walk.npy")
    assert r.returncode == 0, r.stderr
    r = cli("interpolate", gan_run.path, "--pairs", 3, "--steps", 5, "--out", tmp_path / "walk.png")
    from PIL import Image
    assert Image.open(tmp_path / "walk.png").size == ((5 * 30 + 2) * 2, (3 * 30 + 2) * 2)  # a walk per row
    walk = np.load(tmp_path / "walk.npy").reshape(3, 5, 28, 28)
    # each row moves step by step: neighbours closer than the two ends
    d_end = np.abs(walk[:, 0] - walk[:, -1]).mean()
    d_step = np.abs(walk[:, 1:] - walk[:, :-1]).mean()
    assert d_end > 0.05 and d_step < d_end


def test_eval_gan_run(gan_run, cli, tmp_path, snapshot):
    run = tmp_path / "run"
    shutil.copytree(gan_run.path, run)
    before = snapshot(run)
    r = cli("eval", run, "--n-samples", 2000, "--seed", 0)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    tag = "genlab-mnist"
    assert res["family"] == "gan" and res["n_samples"] == 2000 and res["feature_space"] == tag
    floor = res[f"FID[{tag}] real-data floor"]
    assert 0 < floor < res[f"FID[{tag}]"] < 100
    assert res["FID ratio to floor"] == pytest.approx(res[f"FID[{tag}]"] / floor)
    assert res[f"precision[{tag}]"] > 0.3 and 0 < res[f"recall[{tag}]"] <= 1
    assert res[f"KID[{tag}]"] > res[f"KID[{tag}] real-data floor"]
    assert "test_neg_elbo" not in res                      # no likelihood for a GAN
    after = snapshot(run)
    assert json.loads(after["metrics.jsonl"].decode().splitlines()[-1]) == res
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}


# -- small data: resume, other image sizes ---------------------------------------------------

@pytest.fixture(scope="session")
def small_npz(tmp_path_factory, mnist):
    """3,000 real MNIST digits with labels, as npy:PATH data (fast epochs)."""
    p = tmp_path_factory.mktemp("data") / "digits3k.npz"
    np.savez(p, x=mnist.train_x[:3000, 0].numpy(), y=mnist.train_y[:3000].numpy())
    return p


def _quiet_train(**kw):
    return genlab.train("gan", progress=False, log=lambda m: None, **kw)


def test_resume_is_bit_exact_with_ema_and_spectral_norm(small_npz, tmp_path, assert_same_weights):
    kw = dict(dataset=f"npy:{small_npz}", arch="sngan", width=8, seed=3)
    _quiet_train(out=tmp_path / "straight", epochs=2, **kw)
    _quiet_train(out=tmp_path / "split", epochs=1, **kw)
    genlab.train("gan", out=tmp_path / "split", resume=True, epochs=2, progress=False, log=lambda m: None)
    assert_same_weights(tmp_path / "straight", tmp_path / "split")
    w = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert any("parametrizations.weight.original" in k for k in w)   # spectral norm's state saved
    assert any(k.startswith("G_ema.") for k in w)


def test_divergence_stops_with_last_good_checkpoint(small_npz, tmp_path, monkeypatch, weights):
    kw = dict(dataset=f"npy:{small_npz}", arch="dcgan", width=8, seed=0)
    _quiet_train(out=tmp_path / "run", epochs=1, **kw)
    good = weights(tmp_path / "run")
    real_step = GANTask.train_step
    calls = {"n": 0}

    def exploding(self, x, y):
        calls["n"] += 1
        out = real_step(self, x, y)
        return torch.tensor(float("inf")) if calls["n"] >= 5 else out
    monkeypatch.setattr(GANTask, "train_step", exploding)
    with pytest.raises(GenlabError, match="diverged.*last good checkpoint"):
        genlab.train("gan", out=tmp_path / "run", resume=True, epochs=2, progress=False, log=lambda m: None)
    after = weights(tmp_path / "run")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_rgb_32x32_data(tmp_path, mnist, cli):
    """3-channel 32x32 images (coloured digits) train with dcgan and sample as (N, 32, 32, 3)."""
    x = mnist.train_x[:1000].float()
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear").clamp(0, 255)
    rgb = torch.cat([x, 255 - x, x.flip(-1)], 1).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.save(tmp_path / "rgb.npy", rgb)
    r = cli("train", "gan", "--dataset", f"npy:{tmp_path / 'rgb.npy'}", "--arch", "dcgan", "--width", 8,
            "--epochs", 1, "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("sample", tmp_path / "run", "--n", 5, "--seed", 0, "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "s.npy").shape == (5, 32, 32, 3)


# -- bad input: one line, exit 2, nothing written lost ---------------------------------------

def test_run_of_another_family(gan_run, trained_run, cli, expect_user_error, snapshot, tmp_path, cli_here):
    before_gan, before_vae = snapshot(gan_run.path), snapshot(trained_run)
    expect_user_error(cli_here("reconstruct", gan_run.path, "--out", tmp_path / "r.png"), "'gan' run", "VAE")
    expect_user_error(cli_here("train", "gan", "--resume", "--out", trained_run), "'vae' run", "train vae")
    expect_user_error(cli_here("train", "vae", "--resume", "--out", gan_run.path), "'gan' run", "train gan")
    assert snapshot(gan_run.path) == before_gan and snapshot(trained_run) == before_vae
    assert not (tmp_path / "r.png").exists()


def test_dataset_of_the_wrong_size(gan_run, cli, expect_user_error, snapshot, tmp_path, mnist, cli_here):
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((20, 32, 32), np.uint8))
    run = tmp_path / "run"
    shutil.copytree(gan_run.path, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"].update(dataset=f"npy:{big}", image_size=None, channels=None)
    (run / "config.json").write_text(json.dumps(cfg))
    before = snapshot(run)
    expect_user_error(cli_here("eval", run, "--n-samples", 100), "1x32x32", "1x28x28")
    expect_user_error(cli_here("train", "gan", "--resume", "--out", run, "--epochs", 2), "1x32x32", "built for 1x28x28")
    assert snapshot(run) == before
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((20, 20, 20), np.uint8))
    expect_user_error(cli_here("train", "gan", "--dataset", f"npy:{small}", "--out", tmp_path / "new"),
                      "28x28 or 32x32", "--image-size")
    assert not (tmp_path / "new").exists()


BAD_TRAIN = {
    "hinge-on-mlp": (["--arch", "mlp", "--loss", "hinge"], ["--arch mlp", "bce"]),
    "bce-on-sngan": (["--loss", "bce"], ["logits"]),
    "ema-1": (["--ema-decay", "1"], ["--ema-decay"]),
    "lr-0": (["--lr", "0"], ["--lr"]),
    "latent-dim": (["--latent-dim", "8"], ["--latent-dim"]),
    "conditional-dcgan": (["--arch", "dcgan", "--conditional"], ["--conditional", "sngan"]),
    "unknown-arch": (["--arch", "stylegan"], ["stylegan"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_bad_train_options(case, cli, expect_user_error, tmp_path, cli_here):
    args, frags = BAD_TRAIN[case]
    expect_user_error(cli_here("train", "gan", "--out", tmp_path / "run", *args), *frags)
    assert not (tmp_path / "run").exists()


def test_bad_sampling_options(gan_run, lecture_gan_run, cli, expect_user_error, tmp_path, cli_here):
    expect_user_error(cli_here("sample", gan_run.path, "--n", 0, "--out", tmp_path / "s.png"), "--n", ">= 1")
    expect_user_error(cli_here("sample", gan_run.path, "--class", 10, "--out", tmp_path / "s.png"), "--class", "0..9")
    expect_user_error(cli_here("sample", gan_run.path, "--class", "cat", "--out", tmp_path / "s.png"), "unknown class 'cat'")
    expect_user_error(cli_here("sample", lecture_gan_run.path, "--class", 1, "--out", tmp_path / "s.png"),
                      "unconditional")
    expect_user_error(cli_here("eval", gan_run.path, "--inception", tmp_path / "nope.pth"), "not found")
    assert not list(tmp_path.iterdir())


def test_conditional_needs_labels(tmp_path, mnist, cli, expect_user_error, cli_here):
    np.save(tmp_path / "x.npy", mnist.train_x[:50, 0].numpy())
    expect_user_error(cli_here("train", "gan", "--dataset", f"npy:{tmp_path / 'x.npy'}", "--conditional",
                          "--out", tmp_path / "run"), "--conditional", "labelled")
    assert not (tmp_path / "run").exists()


def test_collapse_warning(mnist, classifier, tmp_path):
    """A generator that only draws one real '1' is flagged; one that draws real test
    digits of every class is not."""
    model = build_gan(GANConfig(arch="mlp")).eval()
    warnings = []
    task = GANTask(model, mnist, classifier=classifier, warn=warnings.append, n_eval=500)
    one = ImageData.to_float(mnist.test_x[mnist.test_y == 1][:1])
    model.generate = lambda z, y=None: one.expand(len(z), -1, -1, -1)
    rec = task.end_epoch(1, 0.5, final=True)
    assert rec["class_share"][1] == 1.0
    assert len(warnings) == 1 and "collapse" in warnings[0] and "'1' 100%" in warnings[0]
    real = ImageData.to_float(mnist.test_x[:500])
    model.generate = lambda z, y=None: real[:len(z)]
    warnings.clear()
    rec = task.end_epoch(2, 0.5, final=True)
    assert warnings == [] and max(rec["class_share"]) < 0.15
    assert rec["fid_500"] < 5 and task.grid().shape == (64, 1, 28, 28)  # (the loop writes it to samples/)
