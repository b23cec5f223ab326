"""The style-based generator: a short run on real digits beats an untrained generator,
resumes bit for bit, and its controls do what the paper says -- psi = 0 is the mean image
(of the class or text, in a conditional model), mixing an image with itself changes
nothing, constant noise is deterministic; perceptual path length on a generator whose
path length is known; the emoji dataset; bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import genlab
from genlab.data import ImageData, load_images
from genlab.metrics.classifier import get_classifier
from genlab.metrics.disentangle import perceptual_path_length
from genlab.metrics.images import fid
from genlab.runs import RunDir

TINY = ["--width", "32", "--z-dim", "32", "--w-dim", "32", "--mapping-layers", "2", "--batch-size", "32"]


@pytest.fixture(scope="session")
def digits(tmp_path_factory, mnist):
    """3,000 real MNIST digits with their labels, as an npz dataset."""
    path = tmp_path_factory.mktemp("sgdata") / "digits.npz"
    np.savez(path, x=mnist.train_x[:3000, 0].numpy(), y=mnist.train_y[:3000].numpy())
    return path


@pytest.fixture(scope="session")
def few_digits(tmp_path_factory, mnist):
    path = tmp_path_factory.mktemp("sgdata") / "few.npz"
    np.savez(path, x=mnist.train_x[:320, 0].numpy(), y=mnist.train_y[:320].numpy())
    return path


@pytest.fixture(scope="session")
def sg_run(tmp_path_factory, digits, cli):
    out = tmp_path_factory.mktemp("sg") / "run"
    r = cli("train", "stylegan", "--dataset", f"npy:{digits}", *TINY, "--no-augment", "--epochs", 8, "--seed", 0,
            "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "stylegan2 (32x32, 28x28 data padded" in r.stdout
    return out


def test_training_beats_an_untrained_generator(sg_run, digits):
    run = genlab.load(sg_run)
    data = load_images(f"npy:{digits}")
    clf = get_classifier(data)
    real = clf.features(ImageData.to_float(data.train_x[:1000]))
    trained = fid(real, clf.features(run.sample(1000, seed=0)))
    torch.manual_seed(0)
    run.model.load_state_dict(genlab.families.get("stylegan").build(sg_run, run.config).state_dict())
    untrained = fid(real, clf.features(run.sample(1000, seed=0)))
    assert trained < 0.6 * untrained, (trained, untrained)   # (about 0.5 after these 680 steps)


def test_resume_is_bit_exact(tmp_path, few_digits, cli, assert_same_weights):
    common = ["--dataset", f"npy:{few_digits}", *TINY, "--seed", 1, "--no-progress"]
    assert cli("train", "stylegan", *common, "--epochs", 2, "--out", tmp_path / "straight").returncode == 0
    assert cli("train", "stylegan", *common, "--epochs", 1, "--out", tmp_path / "split").returncode == 0
    r = cli("train", "stylegan", "--out", tmp_path / "split", "--resume", "--epochs", 2, "--no-progress")
    assert r.returncode == 0, r.stderr

    def epochs(run):   # the per-epoch records, less the wall-clock ones
        return [{k: v for k, v in rec.items() if k not in ("step_seconds", "examples_per_s")}
                for rec in RunDir(run).read_metrics() if rec.get("kind") == "epoch"]
    straight, split = epochs(tmp_path / "straight"), epochs(tmp_path / "split")
    # Epoch 1 is the same command in both: a difference there is the training itself not
    # being repeatable on this machine, not the resume.
    assert straight[0] == split[0], ("epoch 1 differs before any resume", straight[0], split[0])
    assert straight == split
    assert_same_weights(tmp_path / "straight", tmp_path / "split")


def test_truncation_to_zero_is_the_class_mean_image_for_every_seed(sg_run):
    run = genlab.load(sg_run)
    x = run.sample(seeds="0-5", trunc=0.0, label=3)
    # (the same w in every row; some CPUs' kernels round rows of one batch differently)
    assert all(torch.allclose(x[0], x[i], atol=1e-5) for i in range(1, 6))
    # each class has its own mean: psi = 0 keeps the class (the overall w_avg would not)
    assert (run.sample(seeds="0-5", trunc=0.0, label=7)[0] - x[0]).abs().max() > 0.05
    y = run.sample(seeds="0-5")
    assert not torch.equal(y[0], y[1])
    # a seed's image does not depend on its company (up to the kernels' rounding, which varies with the batch)
    assert torch.allclose(run.sample(seeds=[3, 4]), y[3:5], atol=1e-5)
    assert torch.equal(run.sample(seeds="0-5", trunc=1.0), y)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_a_conditional_generator_truncates_towards_each_conditions_own_mean_w(kind):
    from genlab.models.stylegan import StyleGANConfig, build_stylegan
    torch.manual_seed(0)
    cfg = StyleGANConfig(z_dim=32, w_dim=32, mapping_layers=2, width=32, image_size=8,
                         **({"num_classes": 10} if kind == "class" else {"text_dim": 16}))
    mapping = build_stylegan(cfg).G.mapping
    with torch.no_grad():   # an untrained mapping gives every condition nearly the same mean: make them differ
        mapping.embed.weight.mul_(10)
    c = torch.tensor([3, 3, 5, 5]) if kind == "class" else torch.randn(2, 16).repeat_interleave(2, 0)
    z = torch.randn(4, 32)
    with torch.no_grad():
        w = mapping(z, c)[:, 0]
        centre = mapping(z, c, truncation_psi=0.0)[:, 0]
        half = mapping(z, c, truncation_psi=0.5)[:, 0]
        # the centre is the condition's own mean of w, estimated independently from 20,000 draws
        many = [mapping(torch.randn(20000, 32), c[i:i + 1].expand(20000, *c.shape[1:]))[:, 0] for i in (0, 2)]
    assert torch.allclose(centre[0], centre[1], atol=1e-5) and torch.allclose(centre[2], centre[3], atol=1e-5)
    spread = [m.std(0).norm() for m in many]
    for i, m, s in ((0, many[0], spread[0]), (2, many[1], spread[1])):
        assert (centre[i] - m.mean(0)).norm() < 0.1 * s
    assert (centre[0] - centre[2]).norm() > 0.5 * min(spread)     # two conditions, two centres
    assert (centre[0] - mapping.w_avg).norm() > 0.1               # not the overall running mean
    assert torch.allclose(half, (w + centre) / 2, atol=1e-5)


def test_mixing_an_image_with_itself_changes_nothing(sg_run):
    run = genlab.load(sg_run)
    grid = run.style_mix(rows=[7], cols=[7, 9], styles="coarse")      # blank, col 7, col 9, row 7, 7<-7, 7<-9
    assert torch.allclose(grid[4], grid[3], atol=1e-5) and torch.allclose(grid[1], grid[3], atol=1e-5)
    assert not torch.equal(grid[5], grid[3])                         # another image's coarse styles do change it


def test_constant_noise_is_deterministic_and_random_noise_is_not(sg_run):
    run = genlab.load(sg_run)
    a, b = run.noise_figure(seed=2, draws=4), run.noise_figure(seed=2, draws=4)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[0], run.sample(seeds=[2])[0], atol=1e-5)
    assert not torch.equal(a[1], a[2])                               # fresh noise, another picture
    assert float(a[-1].max()) == pytest.approx(1.0)                 # the normalised standard deviation


def test_perceptual_path_length_of_a_known_path():
    """z0, z1 orthogonal unit vectors, an identity generator and identity features: slerp
    walks the great circle at angular speed pi/2, so the path length is (pi/2)^2."""
    class Identity(torch.nn.Module):
        def mapping(self, z, c=None):
            return z[:, None, :]

        def synthesis(self, ws, noise_mode="const"):
            return ws[:, 0]

    class Features:
        def features(self, x):
            return x

    calls = []

    def sampler(k, g):
        calls.append(k)
        e = torch.zeros(k, 4)
        e[:, len(calls) % 2] = 1.0
        return e, None

    ppl = perceptual_path_length(Identity(), lambda x: x, Features(), sampler, space="z", n=200)
    assert ppl == pytest.approx(math.pi ** 2 / 4, rel=2e-3)
    ppl_w = perceptual_path_length(Identity(), lambda x: x, Features(), sampler, space="w", n=200, end=True)
    assert ppl_w == pytest.approx(1.0, rel=2e-3)   # lerp from an end point: |d(w / |w|)/dt|^2 = 1


def test_style_based_metrics_are_labelled_and_logged(sg_run, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(sg_run, run_dir)
    res = genlab.load(run_dir).evaluate(n_samples=300, metrics="fid,ppl_wend,ppl_zend,ls")
    tag = next(k for k in res if k.startswith("FID[")).split("[")[1].rstrip("]")
    for key in (f"ppl_wend[{tag}]", f"ppl_zend[{tag}]", f"ls_z[{tag}]", f"ls_w[{tag}]"):
        assert key in res and math.isfinite(res[key]) and res[key] > 0, key
    assert (run_dir / "metrics.jsonl").read_text().strip().splitlines()[-1].count("ppl_wend") == 1


def test_bad_input_is_one_line(sg_run, trained_run, digits, tmp_path, cli_here, expect_user_error, snapshot):
    cli = cli_here
    out = tmp_path / "x.png"
    before = snapshot(sg_run)
    expect_user_error(cli("sample", sg_run, "--seeds", "5-2", "--out", out), "runs backwards")
    expect_user_error(cli("sample", sg_run, "--seeds", "abc", "--out", out), "'abc' is not a seed")
    expect_user_error(cli("sample", sg_run, "--seeds", "1", "--trunc", "9", "--out", out), "--trunc", "[-2, 2]")
    expect_user_error(cli("sample", sg_run, "--seeds", "1", "--trunc", "half", "--out", out), "--trunc", "not a number")
    expect_user_error(cli("sample", sg_run, "--n", 4, "--seeds", "1", "--out", out), "not both")
    expect_user_error(cli("eval", sg_run, "--trunc", 0.7), "--trunc goes with --prompts")
    expect_user_error(cli("style-mix", sg_run, "--rows", 1, "--cols", 2, "--styles", "0-40", "--out", out),
                      "style layers 0-")
    expect_user_error(cli("style-mix", sg_run, "--rows", 1, "--cols", 2, "--styles", "tiny", "--out", out),
                      "not coarse, middle, fine")
    for verb in (["style-mix", "--rows", 1, "--cols", 2], ["noise"], ["truncation"]):
        expect_user_error(cli(verb[0], trained_run, *verb[1:], "--out", out), "'vae' run", "style-based")
    expect_user_error(cli("interpolate", trained_run, "--space", "w", "--out", out), "'vae' run", "W space")
    expect_user_error(cli("sample", trained_run, "--n", 2, "--trunc", 0.5, "--out", out), "'vae' run", "--trunc")
    assert not out.exists() and snapshot(sg_run) == before
    odd = tmp_path / "odd.npy"
    np.save(odd, np.zeros((40, 20, 20), np.uint8))
    expect_user_error(cli("train", "stylegan", "--dataset", f"npy:{odd}", "--out", tmp_path / "r"), "power-of-two")
    small = tmp_path / "small.npz"
    np.savez(small, x=np.zeros((40, 32, 32), np.uint8), y=np.arange(40) % 10)
    expect_user_error(cli("train", "stylegan", "--resume", "--dataset", f"npy:{small}", "--out", sg_run, "--epochs", 4),
                      "only --epochs and --time-budget may change")
    assert not (tmp_path / "r").exists() and snapshot(sg_run) == before


def test_the_figures_write_and_walk_in_w(sg_run, tmp_path, cli):
    for args in (["style-mix", sg_run, "--rows", "1,2", "--cols", "3,4,5", "--out", tmp_path / "mix.png"],
                 ["noise", sg_run, "--out", tmp_path / "noise.png"],
                 ["truncation", sg_run, "--seeds", "0-2", "--psi", "0,0.5,1", "--out", tmp_path / "t.npy"],
                 ["interpolate", sg_run, "--space", "w", "--pairs", 2, "--steps", 4, "--out", tmp_path / "w.npy"],
                 ["sample", sg_run, "--seeds", "0-3", "--trunc", 0.7, "--out", tmp_path / "dir"]):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "t.npy").shape == (9, 28, 28)
    walk = np.load(tmp_path / "w.npy").reshape(2, 4, 28, 28)
    assert np.abs(walk[:, 1:] - walk[:, :-1]).mean() < np.abs(walk[:, 0] - walk[:, -1]).mean()
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == [f"seed000{i}.png" for i in range(4)]


# -- the emoji dataset -----------------------------------------------------------------------

def test_emoji_dataset(cli):
    data = load_images("emoji")
    assert data.shape == (3, 32, 32) and data.num_classes == 9 and len(data.train_x) > 3000
    assert len(data.train_captions) == len(data.train_x) and len(data.test_captions) == len(data.test_x)
    assert any("grinning face" in c[0] for c in data.train_captions + data.test_captions)
    counts = dict((c, tr) for c, tr, _ in data.class_counts())
    assert min(counts.values()) > 100 and sum(counts.values()) == len(data.train_x)
    white = ImageData.to_float(data.train_x[:200])[:, :, 0, 0]        # corners: the white background
    assert float(white.mean()) > 0.95
    assert load_images("emoji", image_size=64).shape == (3, 64, 64)
    r = cli("data", "info", "emoji")
    assert r.returncode == 0 and "Smileys & Emotion" in r.stdout and "captions" in r.stdout


def test_emoji_bad_sizes_are_one_line(cli_here, expect_user_error, tmp_path):
    cli = cli_here
    expect_user_error(cli("data", "info", "emoji", "--image-size", "48"), "one of 32, 64")
    expect_user_error(cli("data", "info", "emoji", "--channels", "1"), "RGB")
