"""Multi-process training on PyTorch's own stack (torchrun + DDP, gloo on the CPU), on real
data: two processes with half the batch each give the weights one process gives (VAE on
MNIST, GPT on Shakespeare, a FSDP-sharded full fine-tune); a run resumes under another
process count; a rank killed with SIGKILL under --max-restarts is restarted and the run ends
where an uninterrupted one does; two machines meet on loopback; a full disk and a newer
checkpoint are one line each, as are the bad inputs of --nproc. (Slow: a GAN in two
processes, FSDP against DDP and its resume, 20 SIGKILLs at random moments.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genlab

GENLAB = [sys.executable, "-m", "genlab"]
quiet = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def mnist_2k(mnist, tmp_path_factory):
    """The first 2,000 real MNIST training images as an npy: dataset (15 steps an epoch)."""
    path = tmp_path_factory.mktemp("data") / "mnist2k.npy"
    np.save(path, mnist.train_x[:2000, 0].numpy())
    return f"npy:{path}"


def _train(cli, *args):
    r = cli("train", *args, "--no-progress")
    assert r.returncode == 0, f"training failed:\n{r.stdout}\n{r.stderr}"
    return r


def _max_diff(a, b, name="model.safetensors") -> float:
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_two_vae_processes_match_one_and_resume_under_another_count(cli, mnist_2k, tmp_path):
    common = ("vae", "--dataset", mnist_2k, "--epochs", "1", "--batch-size", "100", "--seed", "3")
    genlab.train("vae", dataset=mnist_2k, epochs=1, batch_size=100, seed=3, out=tmp_path / "one", **quiet)
    r = _train(cli, *common, "--out", tmp_path / "two", "--nproc", "2")
    assert "launching 2 processes" in r.stdout
    assert r.stdout.count("Epoch 1,") == 1, "only rank 0 prints"
    assert _max_diff(tmp_path / "one", tmp_path / "two") < 1e-5
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())["train"]
    assert (cfg["world_size"], cfg["global_batch_size"]) == (2, 100)
    rec = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["world_size"] == 2 and rec[0]["examples_per_s"] > 0
    # the 2-process run continues in 1 process: the weights of 1 process throughout, up to the
    # float rounding Adam carries on -- far below what the epoch itself changed, in every
    # tensor. (Adam amplifies rounding where a gradient is near zero: the input weight of a
    # pixel lit in almost no image moved 1.1e-4 here while the 313,599 others of its tensor
    # stayed within 1e-6, so the bound is on each tensor's whole change, with a cap.)
    shutil.copytree(tmp_path / "one", tmp_path / "epoch1")
    for run in ("one", "two"):
        genlab.train("vae", out=tmp_path / run, resume=True, epochs=2, **quiet)
    assert _max_diff(tmp_path / "one", tmp_path / "two") < 1e-3
    wa, wb, we = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("one", "two", "epoch1"))
    for k in wa:
        assert (wa[k] - wb[k]).norm() < 1e-3 * (wa[k] - we[k]).norm(), k
    assert json.loads((tmp_path / "two" / "config.json").read_text())["train"]["world_size"] == 1


def test_two_gpt_processes_match_one(cli, tmp_path):
    common = ("lm", "--corpus", "shakespeare", "--max-iters", "12", "--eval-interval", "6", "--log-interval", "6",
              "--batch-size", "8", "--block-size", "64", "--n-layer", "2", "--n-head", "2", "--n-embd", "64",
              "--dropout", "0", "--grad-accum", "2")
    genlab.train("lm", corpus="shakespeare", max_iters=12, eval_interval=6, log_interval=6, batch_size=8,
                 block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0, grad_accum=2, out=tmp_path / "one",
                 **quiet)
    _train(cli, *common, "--out", tmp_path / "two", "--nproc", "2")
    for name in ("model.safetensors", "last.safetensors"):
        assert _max_diff(tmp_path / "one", tmp_path / "two", name) < 1e-5
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in one] == [r["kind"] for r in two]
    for a, b in zip(one, two):  # the logged loss is the global batch's, not rank 0's
        key = "loss" if a["kind"] == "iter" else "val_loss"
        assert abs(a[key] - b[key]) < 1e-4


@pytest.mark.slow
def test_gan_trains_in_two_processes(cli, mnist_2k, tmp_path):
    r = _train(cli, "gan", "--dataset", mnist_2k, "--epochs", "1", "--out", tmp_path / "g", "--nproc", "2")
    assert "D(x)" in r.stdout
    w = load_file(str(tmp_path / "g" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def _workers(root: int) -> list[int]:
    """The training ranks among the launcher's descendants."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    rows = [line.split(None, 2) for line in out if line.strip()]
    parent = {int(r[0]): int(r[1]) for r in rows}

    def below(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False
    return [int(r[0]) for r in rows if len(r) == 3 and "genlab.families.distributed" in r[2] and below(int(r[0]))]


def _args(pid: int) -> str:
    return subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True).stdout


def test_a_killed_rank_is_restarted_and_the_run_continues(cli, mnist_2k, tmp_path):
    common = ["vae", "--dataset", mnist_2k, "--epochs", "3", "--nproc", "2", "--no-progress"]
    _train(cli, *common[:-1], "--out", tmp_path / "whole")
    p = subprocess.Popen(GENLAB + ["train", *common, "--out", str(tmp_path / "killed"), "--max-restarts", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "state.pt").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    ranks = [r for r in _workers(p.pid) if "torch.distributed.run" not in _args(r)]
    assert len(ranks) == 2, f"two ranks run under torchrun (launcher: {p.poll()}, {_args(p.pid)})"
    os.kill(ranks[1], signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "restarted by torchrun: resuming" in out
    assert _max_diff(tmp_path / "whole", tmp_path / "killed") == 0.0
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("args, fragment", [
    (["--nproc", "0"], "--nproc: must be >= 1, not 0"),
    (["--nproc", "2", "--batch-size", "1"], "--batch-size 1 cannot be split over 2 processes"),
    (["--max-restarts", "1"], "--max-restarts needs --nproc N"),
])
def test_bad_process_counts(cli_here, expect_user_error, mnist_2k, tmp_path, args, fragment):
    r = cli_here("train", "vae", "--dataset", mnist_2k, "--epochs", "1", "--out", tmp_path / "run", *args)
    expect_user_error(r, fragment)
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_match_one_process(cli, mnist_2k, tmp_path):
    """Two machines as torchrun sees them (two launchers meeting at one c10d rendezvous), here
    both on this machine: the same weights as one process."""
    common = ["vae", "--dataset", mnist_2k, "--epochs", "1", "--batch-size", "128"]
    genlab.train("vae", dataset=mnist_2k, epochs=1, batch_size=128, out=tmp_path / "one", **quiet)
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = GENLAB + ["train", *common, "--out", str(tmp_path / "two"), "--no-progress", "--nproc", "1",
                    "--nnodes", "2", "--rdzv-endpoint", endpoint]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert sum(o.count("Epoch 1,") for o, _ in outs) == 1, "only global rank 0 prints"
    assert _max_diff(tmp_path / "one", tmp_path / "two") < 1e-5
    assert json.loads((tmp_path / "two" / "config.json").read_text())["train"]["world_size"] == 2


def test_unreachable_rendezvous_is_one_line(cli, mnist_2k, tmp_path, expect_user_error):
    t0 = time.monotonic()
    r = cli("train", "vae", "--dataset", mnist_2k, "--epochs", "1", "--out", tmp_path / "run", "--nproc", "1",
            "--nnodes", "2", "--rdzv-endpoint", "192.0.2.1:29400", "--rdzv-timeout", "3")  # TEST-NET-1: never answers
    expect_user_error(r, "--rdzv-endpoint 192.0.2.1:29400", "nothing answers there after 3s")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "run").exists()


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(cli_here, mnist_2k, tmp_path,
                                                                      expect_user_error):
    """A run on a 12 MB tmpfs: the first epoch's checkpoint fits, a later one does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run = disk / "run"
        r = cli_here("train", "vae", "--dataset", mnist_2k, "--epochs", "6", "--out", run, "--no-progress")
        line = expect_user_error(r, "no space left on device")
        assert "unchanged" in line or "kept" in line
        assert "Epoch 1," in r.stdout
        state = torch.load(run / "state.pt", weights_only=True)
        done = state["epoch"] - 1
        assert done >= 1
        epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs[:done] == list(range(1, done + 1))
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
        # the kept checkpoint resumes, bit for bit, once there is room (on the disk of tmp_path)
        shutil.copytree(run, tmp_path / "moved")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    genlab.train("vae", out=tmp_path / "moved", resume=True, epochs=3, **quiet)
    genlab.train("vae", dataset=mnist_2k, epochs=3, out=tmp_path / "whole", **quiet)
    assert _max_diff(tmp_path / "whole", tmp_path / "moved") == 0.0


def test_a_checkpoint_from_a_newer_format_is_refused(cli_here, mnist_2k, tmp_path, expect_user_error):
    run = tmp_path / "run"
    genlab.train("vae", dataset=mnist_2k, epochs=1, out=run, **quiet)
    state = torch.load(run / "state.pt", weights_only=True)
    state["format"] = 99
    torch.save(state, run / "state.pt")
    before = (run / "model.safetensors").read_bytes()
    r = cli_here("train", "vae", "--dataset", mnist_2k, "--epochs", "2", "--out", run, "--resume")
    expect_user_error(r, "written by a newer genlab", "checkpoint format 99")
    assert (run / "model.safetensors").read_bytes() == before


# -- FSDP2 for full fine-tuning -------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt_base(cli, tmp_path_factory):
    """A small char-level GPT trained briefly on Shakespeare: the model to fine-tune."""
    out = tmp_path_factory.mktemp("base") / "gpt"
    genlab.train("lm", corpus="shakespeare", recipe="nanogpt", n_layer=2, n_head=2, n_embd=64, block_size=64,
                 batch_size=16, max_iters=60, eval_interval=60, dropout=0.0, out=out, **quiet)
    return out


def _finetune(cli, base, out, *args):
    r = cli("finetune", base, "--data", "shakespeare", "--log-interval", "2",
            "--block-size", "64", "--batch-size", "4", "--lr", "1e-3", "--out", out, "--no-progress",
            *(args if "--eval-interval" in args else (*args, "--eval-interval", "3")))
    assert r.returncode == 0, f"fine-tuning failed:\n{r.stdout}\n{r.stderr}"
    return r


def test_fsdp_full_finetune_matches_one_process(cli, gpt_base, tmp_path):
    """Sharded over 2 processes, a full fine-tune takes the steps one process takes."""
    genlab.finetune(str(gpt_base), "shakespeare", tmp_path / "one", method="full", max_iters=4, eval_interval=2,
                    log_interval=2, block_size=64, batch_size=4, lr=1e-3, **quiet)
    _finetune(cli, gpt_base, tmp_path / "fsdp", "--method", "full", "--nproc", "2", "--fsdp", "--max-iters", "4",
              "--eval-interval", "2")
    for name in ("model.safetensors", "last.safetensors"):
        assert _max_diff(tmp_path / "one", tmp_path / "fsdp", name) < 1e-5
    cfg = json.loads((tmp_path / "fsdp" / "config.json").read_text())["train"]
    assert cfg["fsdp"] is True and cfg["world_size"] == 2


@pytest.mark.slow
def test_fsdp_full_finetune_matches_ddp_and_resumes_bit_exactly(cli, gpt_base, tmp_path):
    full = ("--method", "full", "--nproc", "2")
    _finetune(cli, gpt_base, tmp_path / "ddp", *full, "--max-iters", "6")
    _finetune(cli, gpt_base, tmp_path / "fsdp", *full, "--fsdp", "--max-iters", "6")
    for name in ("model.safetensors", "last.safetensors"):
        assert _max_diff(tmp_path / "ddp", tmp_path / "fsdp", name) < 1e-4  # reduce-scatter vs all-reduce order
    assert json.loads((tmp_path / "fsdp" / "config.json").read_text())["train"]["fsdp"] is True
    # the sharded checkpoint is saved whole: 3 steps, then --resume to 6 equals 6 at once
    _finetune(cli, gpt_base, tmp_path / "half", *full, "--fsdp", "--max-iters", "3")
    r = cli("finetune", gpt_base, "--data", "shakespeare", "--out", tmp_path / "half", "--resume",
            "--max-iters", "6", "--nproc", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("model.safetensors", "last.safetensors"):
        assert _max_diff(tmp_path / "fsdp", tmp_path / "half", name) == 0.0


@pytest.mark.parametrize("args, fragment", [
    (["--method", "lora", "--fsdp", "--nproc", "2"], "--fsdp shards a full fine-tune"),
    (["--method", "full", "--fsdp"], "--fsdp shards over processes: give --nproc N"),
])
def test_bad_fsdp_requests(cli, expect_user_error, gpt_base, tmp_path, args, fragment):
    r = cli("finetune", gpt_base, "--data", "shakespeare", "--max-iters", "2", "--out", tmp_path / "ft", *args)
    expect_user_error(r, fragment)
    assert not (tmp_path / "ft").exists()


def test_fsdp_is_for_fine_tunes_only(cli_here, expect_user_error, mnist_2k, tmp_path):
    r = cli_here("train", "vae", "--dataset", mnist_2k, "--epochs", "1", "--out", tmp_path / "run", "--fsdp")
    assert r.returncode == 2 and "--fsdp" in r.stderr


@pytest.mark.slow
def test_twenty_kills_at_random_moments_lose_nothing(cli, mnist, tmp_path):
    """SIGKILL 20 times, each at a random moment of a run (in a step, a checkpoint write or
    an evaluation, wherever it falls), --resume after each: the run ends with the weights of
    an uninterrupted one, bit for bit, each epoch logged once (about 2.5 minutes)."""
    import random
    path = tmp_path / "mnist4k.npy"
    np.save(path, mnist.train_x[:4000, 0].numpy())
    args = ["vae", "--dataset", f"npy:{path}", "--arch", "conv", "--epochs", "6", "--batch-size", "64"]
    t0 = time.monotonic()
    _train(cli, *args, "--out", tmp_path / "whole")
    span = time.monotonic() - t0
    rng, hit = random.Random(0), tmp_path / "killed"
    for _ in range(20):
        again = (hit / "state.pt").exists()
        p = subprocess.Popen(GENLAB + ["train", *args, "--out", str(hit), "--no-progress",
                                       "--resume" if again else "--overwrite"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.15, 0.5) * span)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), err
    _train(cli, *args, "--out", hit, "--resume" if (hit / "state.pt").exists() else "--overwrite")
    assert _max_diff(tmp_path / "whole", hit) == 0.0
    epochs = [json.loads(x)["epoch"] for x in (hit / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
