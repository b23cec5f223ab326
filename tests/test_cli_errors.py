"""User mistakes through the real command line: exit code 2, exactly one line on stderr,
no traceback -- and nothing already on disk is changed by the failing command."""
from __future__ import annotations

import json

import numpy as np
import pytest

# -- mistakes that need no trained run ----------------------------------------------------

NO_RUN_CASES = {
    # id: (arguments; T = a temporary folder holding an empty sub-folder "empty"), fragments
    "unknown-dataset": (["train", "vae", "--dataset", "nope", "--epochs", "1", "--out", "T/out"],
                        ["unknown dataset 'nope'"]),
    "sample-dir-not-a-run": (["sample", "T/empty", "--n", "4", "--out", "T/x.npy"], ["not a genlab run"]),
    "eval-dir-not-a-run": (["eval", "T/empty", "--no-classifier"], ["not a genlab run"]),
    "reconstruct-dir-not-a-run": (["reconstruct", "T/empty"], ["not a genlab run"]),
    "sample-no-such-path": (["sample", "T/nowhere", "--n", "4", "--out", "T/x.npy"], ["no such run directory"]),
    "eval-no-such-path": (["eval", "T/nowhere"], ["no such run directory"]),
    "epochs-0": (["train", "vae", "--epochs", "0", "--out", "T/out"], ["--epochs", "must be >= 1"]),
    "epochs-not-a-number": (["train", "vae", "--epochs", "ten", "--out", "T/out"], ["not a whole number"]),
    "batch-size-negative": (["train", "vae", "--batch-size", "-1", "--out", "T/out"], ["--batch-size"]),
    "lr-zero": (["train", "vae", "--lr", "0", "--out", "T/out"], ["--lr", "must be > 0"]),
    "unknown-arch": (["train", "vae", "--arch", "transformer", "--out", "T/out"], ["--arch"]),
    "unknown-family": (["train", "diffusion"], ["diffusion"]),
    "no-command": ([], ["required"]),
    "unknown-command": (["fly"], ["fly"]),
    "empty-folder-dataset": (["train", "vae", "--dataset", "folder:T/empty", "--epochs", "1", "--out", "T/out"],
                             ["no images found"]),
    "builtin-resized": (["data", "info", "mnist", "--image-size", "32"], ["28x28 grey"]),
    "fetch-unknown": (["data", "fetch", "cifar-1000"], ["unknown dataset"]),
    "resume-without-out": (["train", "vae", "--resume"], ["--resume needs --out"]),
    "resume-not-a-run": (["train", "vae", "--resume", "--out", "T/empty"], ["no run to resume"]),
}


# Each case runs through genlab.cli.main in this interpreter (the parser and error handler
# of the real command, without the 2 s of a fresh interpreter's imports); the cases in
# THROUGH_A_PROCESS also run as `python -m genlab` in a fresh interpreter.
THROUGH_A_PROCESS = {"no-command", "unknown-command", "unknown-dataset", "sample-corrupt-weights",
                     "resume-corrupt-state"}


def _runner(case, cli, cli_here):
    return cli if case.endswith("[process]") else cli_here


def _cases(table):
    return sorted(table) + [f"{c}[process]" for c in sorted(table) if c in THROUGH_A_PROCESS]


@pytest.mark.parametrize("case", _cases(NO_RUN_CASES))
def test_mistakes_without_a_run(case, tmp_path, cli, cli_here, expect_user_error, snapshot):
    args, fragments = NO_RUN_CASES[case.removesuffix("[process]")]
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    r = _runner(case, cli, cli_here)(*[a.replace("T/", f"{tmp_path}/") for a in args])
    expect_user_error(r, *fragments)
    assert snapshot(tmp_path) == before                # nothing written, nothing changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# -- mistakes around an existing, trained run ---------------------------------------------

def _edit_config(run, **model):
    p = run / "config.json"
    cfg = json.loads(p.read_text())
    cfg["model"].update(model)
    p.write_text(json.dumps(cfg, indent=2))


def _truncate(path, n=1000):
    path.write_bytes(path.read_bytes()[:n])


RUN_CASES = {
    # id: (how to prepare the run, arguments with RUN and O = an output folder, fragments)
    "sample-n-0": (None, ["sample", "RUN", "--n", "0", "--out", "O/x.npy"], ["--n", "must be >= 1"]),
    "sample-bad-suffix": (None, ["sample", "RUN", "--n", "4", "--out", "O/x.jpg"], [".png", ".npy"]),
    "reconstruct-bad-suffix": (None, ["reconstruct", "RUN", "--out", "O/x.gif"], [".png"]),
    "interpolate-one-step": (None, ["interpolate", "RUN", "--steps", "1", "--out", "O/i.png"], ["--steps", ">= 2"]),
    "eval-iw-samples-0": (None, ["eval", "RUN", "--iw-samples", "0"], ["--iw-samples"]),
    "sample-shape-mismatch": (lambda run: _edit_config(run, latent_dim=16),
                              ["sample", "RUN", "--n", "4", "--out", "O/x.npy"],
                              ["fc21.weight", "(20, 400)", "(16, 400)"]),
    "eval-shape-mismatch": (lambda run: _edit_config(run, hidden=300),
                            ["eval", "RUN", "--no-classifier"], ["fc1.weight", "shape"]),
    "sample-corrupt-weights": (lambda run: _truncate(run / "model.safetensors"),
                               ["sample", "RUN", "--n", "4", "--out", "O/x.npy"], ["corrupt weights file"]),
    "sample-no-weights": (lambda run: (run / "model.safetensors").unlink(),
                          ["sample", "RUN", "--n", "4", "--out", "O/x.npy"], ["no model.safetensors"]),
    "sample-negative-latent-dim": (lambda run: _edit_config(run, latent_dim=-1),
                                   ["sample", "RUN", "--n", "4", "--out", "O/x.npy"], ["RUN"]),
    "sample-corrupt-config": (lambda run: _truncate(run / "config.json", 40),
                              ["sample", "RUN", "--n", "4", "--out", "O/x.npy"], ["corrupt config"]),
    "train-into-existing-run": (None, ["train", "vae", "--epochs", "1", "--out", "RUN"],
                                ["already exists", "--resume", "--overwrite"]),
    "resume-without-state": (lambda run: (run / "state.pt").unlink(),
                             ["train", "vae", "--resume", "--epochs", "3", "--out", "RUN"], ["nothing to resume"]),
    "resume-corrupt-state": (lambda run: _truncate(run / "state.pt"),
                             ["train", "vae", "--resume", "--epochs", "3", "--out", "RUN"],
                             ["corrupt resume state"]),
    "resume-corrupt-weights": (lambda run: _truncate(run / "model.safetensors"),
                               ["train", "vae", "--resume", "--epochs", "3", "--out", "RUN"],
                               ["corrupt weights file"]),
}


@pytest.mark.parametrize("case", _cases(RUN_CASES))
def test_mistakes_around_a_run(case, run_copy, tmp_path, cli, cli_here, expect_user_error, snapshot):
    prepare, args, fragments = RUN_CASES[case.removesuffix("[process]")]
    if prepare:
        prepare(run_copy)
    outdir = tmp_path / "outputs"
    outdir.mkdir()
    before = snapshot(run_copy)
    r = _runner(case, cli, cli_here)(*[a.replace("RUN", str(run_copy)).replace("O/", f"{outdir}/") for a in args])
    expect_user_error(r, *[f.replace("RUN", str(run_copy)) for f in fragments])
    after = snapshot(run_copy)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a failing command changed {changed}"
    assert list(outdir.iterdir()) == [], "a failing command wrote an output file"


def test_training_on_a_single_image(tmp_path, cli, mnist):
    """A one-image dataset either trains or is refused with a clear error -- no traceback."""
    np.save(tmp_path / "one.npy", mnist.train_x[:1, 0].numpy())
    r = cli("train", "vae", "--dataset", f"npy:{tmp_path / 'one.npy'}", "--epochs", "1",
            "--out", tmp_path / "run", "--no-progress")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 2), r.stderr
    if r.returncode == 2:
        assert len(r.stderr.splitlines()) == 1, r.stderr
