"""Shared fixtures for the genlab test suite.

Everything here works on real data: MNIST from the genlab cache ($GENLAB_DATA, default
~/.cache/genlab; on a fresh machine the first load fetches it). The expensive objects
(a 2-epoch VAE trained through the CLI, a 1-epoch VAE trained through the API, the
dataset classifier) are built once per session; tests that change a run work on a copy.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import genlab
from genlab.cli import main as genlab_main
from genlab.data import load_images, sources

GENLAB = [sys.executable, "-m", "genlab"]


# -- helpers (exposed as fixtures so test files need not import conftest) ----------------

def cli(*args, cwd=None, env=None, timeout=900, input_text=None) -> subprocess.CompletedProcess:
    """Run `genlab ARGS...` in a fresh interpreter (this environment plus `env`, stdin
    `input_text`) and capture its output. Importable (`from conftest import cli`) and a
    fixture (`cli`)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(GENLAB + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, input=input_text,
                          stdin=None if input_text is not None else subprocess.DEVNULL)


_cli = cli


def cli_here(*args, env=None) -> subprocess.CompletedProcess:
    """`genlab ARGS...` run in this interpreter: for calls that must fail with a user error,
    which is decided before any work, so the 2 s of a fresh interpreter's imports buy nothing.
    The global RNG, thread count and environment are restored afterwards, so no other test
    sees the call."""
    out, err = io.StringIO(), io.StringIO()
    rng, threads, saved_env = torch.get_rng_state(), torch.get_num_threads(), dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = genlab_main([str(a) for a in args])
            except SystemExit as e:          # argparse's own refusals
                code = e.code if isinstance(e.code, int) else 2
    finally:
        torch.set_rng_state(rng)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(GENLAB + [str(a) for a in args], code, out.getvalue(), err.getvalue())


def _expect_user_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """The error contract: exit code 2, exactly one non-empty line on stderr, no traceback.
    Returns that line; each of `fragments` must occur in it (case-insensitive)."""
    assert r.returncode == 2, f"exit code {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be exactly one line, got {len(lines)}:\n{r.stderr}"
    line = lines[0].strip()
    assert line, "stderr line is empty"
    for frag in fragments:
        assert frag.lower() in line.lower(), f"{frag!r} not in error line: {line}"
    return line


def _snapshot(root: Path) -> dict:
    """{relative path: bytes} of every file under root (to prove nothing changed)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _weights(run_path) -> dict:
    return load_file(str(Path(run_path) / "model.safetensors"))


def _assert_same_weights(a, b) -> None:
    """Bit-identical state dicts (run paths or dicts of tensors)."""
    wa = a if isinstance(a, dict) else _weights(a)
    wb = b if isinstance(b, dict) else _weights(b)
    assert sorted(wa) == sorted(wb)
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"tensors differ: {diff}"


@pytest.fixture(name="cli", scope="session")
def cli_fixture():
    return cli


@pytest.fixture(name="cli_here", scope="session")
def cli_here_fixture():
    return cli_here


@pytest.fixture(scope="session")
def expect_user_error():
    return _expect_user_error


@pytest.fixture(scope="session")
def snapshot():
    return _snapshot


@pytest.fixture(scope="session")
def weights():
    return _weights


@pytest.fixture(scope="session")
def assert_same_weights():
    return _assert_same_weights


# -- real data -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, loaded (and fetched if this machine has no cache yet) once."""
    return load_images("mnist")


@pytest.fixture(scope="session")
def mnist_files(mnist) -> Path:
    """The folder holding the verified raw MNIST IDX files."""
    folder = sources.data_root() / "mnist"
    for name in sources.IDX_FILES:
        assert (folder / name).is_file(), f"{folder / name} missing after load_images('mnist')"
    return folder


@pytest.fixture(scope="session")
def classifier(mnist):
    """genlab's MNIST classifier, trained from scratch in this test run (~80 s), never
    taken from an earlier run's cache: metrics tests see what a new user's machine makes.
    Where a cached classifier of the same recipe exists, it must be bit-identical to this
    one (the training is reproducible); where none exists, this one is cached, so the
    trainings the tests start through the CLI use it too."""
    from genlab.metrics.classifier import cached_classifier, save_classifier, train_classifier
    fresh = train_classifier(mnist)
    cached = cached_classifier(mnist)
    if cached is None:
        save_classifier(mnist, fresh)
    else:
        _assert_same_weights(fresh.net.state_dict(), cached.net.state_dict())
    return fresh


# -- trained runs ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trained_cli_run(tmp_path_factory, mnist):
    """The lecture's MLP VAE trained 2 epochs on MNIST (seed 0) through the CLI:
    .path (the run directory), .stdout, .stderr (what the command printed)."""
    path = tmp_path_factory.mktemp("runs") / "mlp-2ep"
    r = _cli("train", "vae", "--dataset", "mnist", "--arch", "mlp", "--epochs", 2, "--seed", 0,
             "--out", path, "--no-progress")
    assert r.returncode == 0, f"training failed:\n{r.stdout}\n{r.stderr}"
    return SimpleNamespace(path=path, stdout=r.stdout, stderr=r.stderr)


@pytest.fixture(scope="session")
def trained_run(trained_cli_run) -> Path:
    """The directory of the 2-epoch run (read-only: copy it with `run_copy` to change it)."""
    return trained_cli_run.path


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory, mnist):
    """The same model and seed as `trained_run`, trained 1 epoch through the Python API."""
    path = tmp_path_factory.mktemp("runs") / "mlp-1ep"
    lines: list[str] = []
    run = genlab.train("vae", dataset="mnist", epochs=1, out=path, seed=0, progress=False,
                       log=lines.append)
    return SimpleNamespace(path=path, run=run, log=lines)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the 2-epoch run, for tests that change or damage it."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


# -- what the test run had to build -------------------------------------------------------

_CACHE_AT_START: dict = {}


def _cache_entries() -> dict:
    """{entry: size in bytes} of the data cache, one level down (mnist, classifiers/mnist, ...)."""
    root = sources.data_root()
    out = {}
    if root.is_dir():
        for top in sorted(root.iterdir()):
            subs = [top] if top.is_file() or top.name not in ("classifiers", "models") else sorted(top.iterdir())
            for p in subs:
                files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
                out[p.relative_to(root).as_posix()] = sum(f.stat().st_size for f in files)
    return out


def pytest_sessionstart(session):
    _CACHE_AT_START.update(_cache_entries())


def pytest_terminal_summary(terminalreporter):
    """Say whether the data cache was empty (as on a new user's machine: .ci/run makes it
    so) and what this run built into it."""
    now = _cache_entries()
    built = [k for k in now if k not in _CACHE_AT_START]
    state = "empty at the start" if not _CACHE_AT_START else f"held {len(_CACHE_AT_START)} entries at the start"
    terminalreporter.write_line(f"genlab data cache {sources.data_root()}: {state}; built in this run: "
                                + (", ".join(f"{k} ({now[k] / 2**20:.1f} MiB)" for k in built) or "nothing"))


# -- a --runs folder for genlab serve ------------------------------------------------------

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SG_TINY = dict(width=32, z_dim=32, w_dim=32, mapping_layers=2, batch_size=32, augment=False)


def captioned_digits(root: Path, mnist, n: int = 160) -> Path:
    """n real digits as PNGs in one folder (no class sub-folders) with captions.txt, two
    captions each ("a handwritten seven", "the digit 7"). Importable (`from conftest import ...`)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.fromarray(mnist.train_x[i, 0].numpy()).save(root / f"d{i:03d}.png")
        k = int(mnist.train_y[i])
        lines += [f"d{i:03d}.png\ta handwritten {DIGIT_WORDS[k]}", f"d{i:03d}.png\tthe digit {k}"]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory, trained_run, mnist) -> Path:
    """A --runs folder: vae (the 2-epoch lecture VAE), sg (a class-conditional style-based
    generator, 2 epochs on 320 digits), tvae (a text-conditioned VAE on 160 captioned
    digits), lm (a character-level GPT, 300 steps on Shakespeare, with genlab's chat template),
    vae-int8 (genlab compress's int8 copy of vae, with its report) and escape, a symlink to a
    run outside the folder (about 30 s). For genlab serve's tests."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "runs"
    root.mkdir()
    shutil.copytree(trained_run, root / "vae")
    quiet = dict(progress=False, log=lambda *a: None)
    few = base / "few.npz"
    np.savez(few, x=mnist.train_x[:320, 0].numpy(), y=mnist.train_y[:320].numpy())
    genlab.train("stylegan", dataset=f"npy:{few}", epochs=2, seed=0, out=root / "sg", **SG_TINY, **quiet)
    folder = captioned_digits(base / "captioned", mnist)
    genlab.train("vae", dataset=f"folder:{folder}", condition="text", text_encoder="learned", epochs=1,
                 out=root / "tvae", **quiet)
    genlab.train("lm", corpus="shakespeare", out=root / "lm", max_iters=300, recipe="nanogpt", n_layer=2, n_head=2,
                 n_embd=64, block_size=128, batch_size=16, lr=5e-3, warmup_iters=20, eval_interval=100,
                 log_interval=25, **quiet)
    genlab.compress(str(root / "vae"), root / "vae-int8", quantize="int8", log=lambda *a: None)
    (base / "outside").mkdir()
    shutil.copytree(trained_run, base / "outside" / "elsewhere")
    os.symlink(base / "outside" / "elsewhere", root / "escape")   # a link out of the folder
    return root
