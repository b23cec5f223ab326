"""Scaling out on PyTorch's own stack, on this machine: one table per part, measured in one run.

    python benchmarks/scale.py                    # everything (about 6 minutes on 2 cores)
    python benchmarks/scale.py --only semantics   # parts: semantics, throughput, faults

- semantics: 2 processes with half the batch each vs 1 process with the whole batch, after
  k steps, the largest weight difference (VAE on real MNIST, GPT on Shakespeare).
- throughput: 1 process (all cores) vs 2 (one core each), examples/s per rank and in all,
  and the share of a step spent in the gradient all-reduce: the same DDP steps timed with
  and without gradient synchronisation (`no_sync`), gloo on the CPU (nccl when CUDA is here).
- faults: a training run killed with SIGKILL 20 times, each at a random moment between 15%
  and 50% of an uninterrupted run's wall time after its (re)start -- in a step, a
  checkpoint write or an evaluation, wherever it falls -- and resumed each time with
  --resume, against an uninterrupted run: how many resumes worked, and whether the final
  weights are bit-identical.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

GENLAB = [sys.executable, "-m", "genlab"]
say = print


def _train(*args, check=True):
    r = subprocess.run(GENLAB + ["train", *map(str, args), "--no-progress"], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"training failed: {r.stderr[-2000:]}")
    return r


def _diff(a: Path, b: Path, name="model.safetensors") -> float:
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _mnist_npy(tmp: Path, n: int) -> str:
    from genlab.data import load_images
    path = tmp / f"mnist{n}.npy"
    np.save(path, load_images("mnist").train_x[:n, 0].numpy())
    return f"npy:{path}"


def semantics(tmp: Path) -> None:
    data = _mnist_npy(tmp, 2000)
    vae = ("vae", "--dataset", data, "--epochs", "2", "--batch-size", "128")
    gpt = ("lm", "--corpus", "shakespeare", "--max-iters", "40", "--eval-interval", "20", "--batch-size", "16",
           "--block-size", "64", "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--dropout", "0")
    rows = []
    for name, args, steps in (("VAE (MLP), MNIST 2,000 images", vae, 2 * 15), ("GPT (2 layers), Shakespeare", gpt, 40)):
        _train(*args, "--out", tmp / f"{args[0]}-1")
        _train(*args, "--out", tmp / f"{args[0]}-2", "--nproc", "2")
        rows.append((name, steps, _diff(tmp / f"{args[0]}-1", tmp / f"{args[0]}-2")))
    say("\n## Semantics: 2 processes x batch B/2 vs 1 process x batch B\n")
    say("| model | steps | largest weight difference |")
    say("|---|---:|---:|")
    for name, steps, d in rows:
        say(f"| {name} | {steps} | {d:.2e} |")


WORKER = r'''
import sys, time, json, torch, torch.distributed as dist
from genlab.train.engine import Engine
from genlab.models.vae import VAEConfig, build_vae
from genlab.models.vae import elbo_terms
eng = Engine.for_training("cpu")
torch.manual_seed(0)
model = build_vae(VAEConfig(arch=sys.argv[1]))
net = eng.wrap(model, "sum")
opt = torch.optim.Adam(model.parameters(), 1e-3)
B = int(sys.argv[2]); x_all = torch.rand(B, 1, 28, 28)
def step(sync):
    x = eng.split(x_all)
    ctx = net.no_sync() if (not sync and hasattr(net, "no_sync")) else torch.enable_grad()
    with ctx:
        logits, mu, logvar = net(x, None, eps=eng.randn(model.cfg.latent_dim))
        bce, kld = elbo_terms(logits, x, mu, logvar)
        opt.zero_grad(); (bce + kld).backward()
    opt.step()
out = {}
for sync in (True, False, True, False):
    for _ in range(5): step(sync)
    eng.barrier(); t = time.perf_counter()
    for _ in range(40): step(sync)
    eng.barrier(); out.setdefault(sync, []).append((time.perf_counter() - t) / 40)
if eng.main:
    print(json.dumps({"sync": min(out[True]), "nosync": min(out[False]), "world": eng.world_size}))
eng.close()
'''


def throughput(tmp: Path) -> None:
    data = "mnist"
    rows = []
    for arch in ("mlp", "conv"):
        for nproc in (1, 2):
            out = tmp / f"tp-{arch}-{nproc}"
            args = ["vae", "--dataset", data, "--arch", arch, "--epochs", "1", "--batch-size", "128", "--out", out]
            _train(*args, *(["--nproc", "2"] if nproc == 2 else []))
            rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
            worker = tmp / "worker.py"
            worker.write_text(WORKER)
            launch = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
            cmd = [sys.executable, *launch, str(worker), arch, "128"]
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            share = max(0.0, (m["sync"] - m["nosync"]) / m["sync"]) if nproc > 1 else 0.0
            rows.append((arch, nproc, rec["examples_per_s"], rec["examples_per_s"] * nproc, m["sync"] * 1e3, share))
    say("\n## Throughput: VAE, one epoch of MNIST (60,000 images), global batch 128, gloo on the CPU\n")
    say("| VAE | processes | examples/s per rank | examples/s in all | step (ms) | all-reduce share of a step |")
    say("|---|---:|---:|---:|---:|---:|")
    for arch, n, per, total, ms, share in rows:
        say(f"| {arch} | {n} | {per:,.0f} | {total:,.0f} | {ms:.1f} | {share:.0%} |")


def faults(tmp: Path, kills: int = 20, seed: int = 0) -> None:
    data = _mnist_npy(tmp, 4000)
    args = ["vae", "--dataset", data, "--arch", "conv", "--epochs", "6", "--batch-size", "64"]
    whole, hit = tmp / "whole", tmp / "killed"
    t0 = time.monotonic()
    _train(*args, "--out", whole)
    span = time.monotonic() - t0
    rng = random.Random(seed)
    resumed = lost = 0
    for k in range(kills):
        again = (hit / "state.pt").exists()
        cmd = GENLAB + ["train", *map(str, args), "--out", str(hit), "--no-progress",
                        *(["--resume"] if again else ["--overwrite"])]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.0) * span / 2)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
        resumed += again
        if p.returncode not in (0, -signal.SIGKILL):
            lost += 1
            say(f"kill {k + 1}: the run failed: {err.strip()[-300:]}")
    r = _train(*args, "--out", hit, "--no-progress", *(["--resume"] if (hit / "state.pt").exists() else ["--overwrite"]),
               check=False)
    ok = r.returncode == 0
    same = ok and _diff(whole, hit) == 0.0
    epochs = [json.loads(x)["epoch"] for x in (hit / "metrics.jsonl").read_text().splitlines()] if ok else []
    say("\n## Faults: SIGKILL at random moments, then --resume (ConvVAE, MNIST 4,000 images, 6 epochs)\n")
    say("| kills | resumes | runs lost | final run loads | final weights equal the uninterrupted run's | epochs logged |")
    say("|---:|---:|---:|---|---|---|")
    say(f"| {kills} | {resumed} | {lost + (not ok)} | {'yes' if ok else 'no'} | {'yes, bit for bit' if same else 'NO'} "
        f"| {', '.join(map(str, epochs))} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("semantics", "throughput", "faults"), action="append")
    a = ap.parse_args()
    parts = a.only or ["semantics", "throughput", "faults"]
    say(f"torch {torch.__version__}, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory(prefix="genlab-scale-") as tmp:
        for part in parts:
            globals()[part](Path(tmp))


if __name__ == "__main__":
    main()
