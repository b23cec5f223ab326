"""The house the families live in: runs written by the code before the plug-in registry
load, sample, generate and resume exactly as that code did; the registry opens every run;
an option declared once behaves the same from Python and the CLI; the engine honours
--device; and the defects found while moving in stay fixed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import genlab
from genlab.errors import GenlabError
from genlab.models.gpt import GPTConfig

OLD = Path(__file__).parent / "data" / "old-runs"   # written by genlab before the refactor (commit c3d5ca8)


def _old_run(tmp_path, name) -> Path:
    """A private copy of a checked-in run, its dataset path pointed at the checked-in data."""
    dst = tmp_path / name
    shutil.copytree(OLD / name, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if cfg["data"].get("dataset", "").startswith("npy:"):
        cfg["data"]["dataset"] = f"npy:{OLD / 'blobs.npz'}"
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


# -- runs of the previous code ---------------------------------------------------------------

# The references were written on one machine; another CPU's kernels round the last bit
# differently (an AMD EPYC differs from the Intel machine that wrote them by 6e-8), so they
# are compared up to rounding -- a changed latent, batch order or RNG stream moves every
# pixel by far more.
ROUNDING = 1e-5


def test_an_old_vae_run_samples_as_the_old_code_did(tmp_path, cli):
    run = _old_run(tmp_path, "vae")
    r = cli("sample", run, "--n", 6, "--seed", 3, "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    ref = np.load(OLD / "vae_samples.npy")
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), ref, rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(genlab.load(run).sample(6, seed=3)[:, 0].numpy(), ref, rtol=0, atol=ROUNDING)


def test_an_old_vae_run_resumes_to_the_old_codes_weights(tmp_path):
    run = _old_run(tmp_path, "vae")
    genlab.train("vae", out=run, resume=True, epochs=2, progress=False, log=lambda *a: None)
    # samples of the resumed weights, as the previous code's resume made them (one more epoch:
    # the rounding differences of another CPU may grow a little)
    got = genlab.load(run).sample(6, seed=3)[:, 0].numpy()
    np.testing.assert_allclose(got, np.load(OLD / "vae_2ep_samples.npy"), rtol=0, atol=10 * ROUNDING)


def test_an_old_lm_run_generates_the_old_codes_text(tmp_path, cli):
    run = _old_run(tmp_path, "lm")
    for args, expected in ((["--temperature", "0"], "lm_greedy.txt"), (["--seed", "5"], "lm_seed5.txt")):
        r = cli("generate", run, "--prompt", "ROMEO:", "--max-new-tokens", 40, *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout == (OLD / expected).read_text()


# -- the registry ----------------------------------------------------------------------------

def test_every_family_is_a_registered_plug_in(tmp_path):
    from genlab.families import FAMILIES, get, names
    assert names(train_verb=True) == ["vae", "gan", "stylegan", "lm"]
    assert {"finetune", "reward"} <= set(FAMILIES)
    assert type(genlab.load(_old_run(tmp_path, "vae"))).__name__ == "VAERun"
    assert type(genlab.load(_old_run(tmp_path, "lm"))).__name__ == "LMRun"
    with pytest.raises(GenlabError, match="unknown model family 'diffusion'"):
        get("diffusion")


def test_an_option_declared_once_checks_alike_in_python_and_the_cli(cli, expect_user_error, tmp_path, cli_here):
    # --warmup-iters: the lm trainer refused -5, the fine-tuner accepted it (two copies had drifted)
    for args in (["train", "lm"], ["finetune", "smollm2", "--data", "shakespeare"]):
        expect_user_error(cli_here(*args, "--warmup-iters", "-5", "--out", tmp_path / "o"), "--warmup-iters", "must be >= 0")
    with pytest.raises(GenlabError, match="--warmup-iters must be a whole number >= 0"):
        genlab.finetune("smollm2", "shakespeare", out=tmp_path / "o", warmup_iters=-5)
    with pytest.raises(GenlabError, match="--width must be a whole number >= 2"):
        genlab.train("gan", out=tmp_path / "o", width=1)
    expect_user_error(cli_here("train", "gan", "--width", "1", "--out", tmp_path / "o"), "--width", "must be >= 2")
    assert not (tmp_path / "o").exists()


# -- the engine --------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_every_trainer_takes_a_device(device, tmp_path, cli):
    data = f"npy:{OLD / 'blobs.npz'}"
    for args in (["vae", "--dataset", data, "--epochs", "1"],
                 ["gan", "--arch", "mlp", "--dataset", data, "--epochs", "1"],
                 ["lm", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                  "--max-iters", "4", "--eval-interval", "4"]):
        out = tmp_path / f"{args[0]}-{device}"
        r = cli("train", *args, "--device", device, "--out", out, "--no-progress")
        assert r.returncode == 0, r.stderr
        assert (out / "model.safetensors").is_file()
    r = cli("sample", tmp_path / f"vae-{device}", "--n", 2, "--out", tmp_path / "s.png", "--device", device)
    assert r.returncode == 0, r.stderr


def test_a_missing_device_is_one_line(cli, expect_user_error, tmp_path, cli_here):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    expect_user_error(cli_here("train", "vae", "--device", "cuda", "--out", tmp_path / "o"), "no CUDA GPU")
    expect_user_error(cli_here("train", "vae", "--device", "tpu", "--out", tmp_path / "o"), "unknown device 'tpu'")
    assert not (tmp_path / "o").exists()


# -- defects found on the way ------------------------------------------------------------------

def test_gpt_config_checks_dropout():
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.5)
    with pytest.raises(GenlabError, match="--dropout must be in"):
        genlab.train("lm", dropout=1.5, out="never-written")
    assert not Path("never-written").exists()


def test_sizes_beyond_memory_are_refused_up_front(tmp_path, cli, expect_user_error, cli_here):
    run = _old_run(tmp_path, "vae")
    before = sorted(p.name for p in tmp_path.iterdir())
    expect_user_error(cli_here("sample", run, "--n", 1_000_000_000, "--out", tmp_path / "x.npy"), "--n 1000000000",
                      "GiB of memory")
    expect_user_error(cli_here("interpolate", run, "--pairs", 1_000_000, "--steps", 1000, "--out", tmp_path / "i.npy"),
                      "GiB of memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_unwritable_output_is_one_line(tmp_path, cli, expect_user_error, cli_here):
    run = _old_run(tmp_path, "vae")
    expect_user_error(cli_here("sample", run, "--out", "/proc/x.png"), "/proc/x.png", "cannot write")
    (tmp_path / "file").write_text("not a folder")
    expect_user_error(cli_here("sample", run, "--out", tmp_path / "file" / "x.png"), "not a folder")


def test_resume_accepts_flags_that_repeat_the_run(tmp_path, cli, expect_user_error, cli_here):
    run = _old_run(tmp_path, "vae")
    data = f"npy:{OLD / 'blobs.npz'}"
    before = (run / "model.safetensors").read_bytes()
    expect_user_error(cli_here("train", "vae", "--dataset", data, "--lr", "0.01", "--out", run, "--resume", "--epochs", 2),
                      "only --epochs and --time-budget may change", "lr")
    assert (run / "model.safetensors").read_bytes() == before
    r = cli("train", "vae", "--dataset", data, "--lr", "0.001", "--arch", "mlp", "--seed", "0", "--out", run,
            "--resume", "--epochs", 2, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Epoch 2," in r.stdout


def test_lm_resume_accepts_the_options_it_was_trained_with(tmp_path, cli, expect_user_error, cli_here):
    out = tmp_path / "lm"
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--eval-interval", "5"]
    r = cli("train", "lm", *tiny, "--max-iters", 5, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("train", "lm", *tiny, "--max-iters", 10, "--out", out, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "iter 10: val loss" in r.stdout
    expect_user_error(cli_here("train", "lm", "--n-layer", "2", "--out", out, "--resume"), "only --max-iters", "n_layer")
