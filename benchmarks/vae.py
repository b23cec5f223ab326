"""VAE benchmark: the lecture's script as written beside genlab, measured in one run.

    python benchmarks/vae.py              # reference, genlab (lecture settings), genlab fast
    python benchmarks/vae.py --with-best  # also genlab's best recipe in a 10-minute budget

Each row runs in its own subprocess (so peak memory is that row's alone) one after the
other, never two at once. Columns:
  train s        seconds of training steps for all epochs (test evaluation not counted)
  test@end       test loss (negative ELBO, nats/image) after the last epoch
  t(<=105.4)     training seconds until the first epoch whose test loss is <= 105.4
  peak MB        peak resident memory of the process
  recognised     share of 1,000 samples the genlab-mnist classifier labels with p > 0.9

The reference is the lecture's code verbatim (model, loss, loop, Adam lr 1e-3, batch 128)
fed by a torchvision-style loader: per-sample PIL image -> ToTensor -> default collate,
exactly what `torchvision.datasets.MNIST(transform=ToTensor())` does (torchvision itself
does not import beside the CPU torch wheel used here, so its two functions are inlined).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TARGET = 105.4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(epochs: int = 10, seed: int = 0) -> dict:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from PIL import Image

    from genlab.data import load_images

    data = load_images("mnist")

    class MNIST(torch.utils.data.Dataset):  # torchvision.datasets.MNIST.__getitem__
        def __init__(self, x, y):
            self.data, self.targets = x[:, 0], y

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            img, target = self.data[index], int(self.targets[index])
            img = Image.fromarray(img.numpy(), mode="L")
            return to_tensor(img), target

    def to_tensor(pic):  # torchvision.transforms.ToTensor for a mode-L PIL image
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.float32).div(255)

    # --- the lecture's code, verbatim -------------------------------------------------
    class VAE(nn.Module):
        def __init__(self):
            super(VAE, self).__init__()
            self.fc1 = nn.Linear(784, 400)
            self.fc21 = nn.Linear(400, 20)  # mu layer
            self.fc22 = nn.Linear(400, 20)  # logvar layer
            self.fc3 = nn.Linear(20, 400)
            self.fc4 = nn.Linear(400, 784)

        def encode(self, x):
            h1 = F.relu(self.fc1(x))
            return self.fc21(h1), self.fc22(h1)

        def reparameterize(self, mu, logvar):
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std)
            return mu + eps * std

        def decode(self, z):
            h3 = F.relu(self.fc3(z))
            return torch.sigmoid(self.fc4(h3))

        def forward(self, x):
            mu, logvar = self.encode(x.view(-1, 784))
            z = self.reparameterize(mu, logvar)
            return self.decode(z), mu, logvar

    def loss_function(recon_x, x, mu, logvar):
        BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction='sum')
        KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return BCE + KLD

    torch.manual_seed(seed)
    trainset = MNIST(data.train_x, data.train_y)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=128, shuffle=True)
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    test_x = data.test_x.float().div(255)
    rows, train_s = [], 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        train_loss = 0
        for batch, _ in trainloader:
            recon_batch, mu, logvar = model(batch)
            optimizer.zero_grad()
            loss = loss_function(recon_batch, batch, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        train_s += time.perf_counter() - t0
        print(f'Epoch {epoch}, Loss: {train_loss / len(trainloader.dataset):.4f}', file=sys.stderr)
        # --- not in the lecture: the test loss, outside the timed part ------------------
        with torch.no_grad(), torch.random.fork_rng():
            model.eval()
            tl = sum(_lecture_test(model, loss_function, test_x[i:i + 1000])
                     for i in range(0, len(test_x), 1000)) / len(test_x)
        rows.append({"epoch": epoch, "train_loss": train_loss / len(trainset), "test_loss": tl,
                     "step_seconds": train_s})
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        samples = model.decode(torch.randn(1000, 20, generator=g)).view(-1, 1, 28, 28)
    return {"epochs": rows, "samples": samples}


def _lecture_test(model, loss_function, x):
    recon, mu, logvar = model(x)
    return float(loss_function(recon, x, mu, logvar))


def genlab_row(out: str, **kw) -> dict:
    import genlab

    run = genlab.train("vae", dataset="mnist", out=out, overwrite=True, progress=False,
                       log=lambda m: print(m, file=sys.stderr), **kw)
    rows = [r for r in run.dir.read_metrics() if r.get("kind") == "epoch" and "partial" not in r]
    last = [r for r in run.dir.read_metrics() if r.get("kind") == "epoch"]
    return {"epochs": rows or last, "samples": run.sample(1000, seed=0), "summary": run.summary}


ROWS = {
    "reference": ("lecture script (torchvision-style loader)", lambda out: reference()),
    "genlab-mlp": ("genlab --arch mlp, lecture settings", lambda out: genlab_row(out, arch="mlp", epochs=10)),
    "genlab-fast": ("genlab --arch mlp --batch-size 64 --lr 3e-3 --schedule linear --epochs 4",
                    lambda out: genlab_row(out, arch="mlp", epochs=4, batch_size=64, lr=3e-3, schedule="linear")),
    "genlab-best": ("genlab --arch conv --time-budget 600 (best recipe, 10 min)",
                    lambda out: genlab_row(out, arch="conv", time_budget=600)),
}


def one(name: str, out: str) -> dict:
    import torch

    from genlab.data import load_images
    from genlab.metrics.classifier import get_classifier

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    res = ROWS[name][1](out)
    rows = res["epochs"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hit = next((r for r in rows if r["test_loss"] <= TARGET), None)
    clf = get_classifier(load_images("mnist"))
    rec = clf.recognised(res["samples"].reshape(-1, 1, 28, 28))
    return {"name": name, "label": ROWS[name][0], "epochs": len(rows),
            "train_s": rows[-1]["step_seconds"], "train_loss": rows[-1]["train_loss"],
            "test_loss": rows[-1]["test_loss"], "t_target": hit["step_seconds"] if hit else None,
            "peak_mb": peak_mb, "recognised": rec["recognised"],
            "per_epoch": [(r["epoch"], round(r["test_loss"], 3), round(r["step_seconds"], 2)) for r in rows]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-best", action="store_true", help="also run the 10-minute best recipe")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench"), help="where runs go")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, os.path.join(a.out, a.one))))
        return
    names = ["reference", "genlab-mlp", "genlab-fast"] + (["genlab-best"] if a.with_best else [])
    results = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, __file__, "--one", name, "--out", a.out],
                           stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    ref = results[0]
    print(f"\nVAE on MNIST, {os.cpu_count()} cores, torch threads as default; target test loss {TARGET}")
    print("| run | epochs | train s | train loss | test loss | t(<=105.4) s | speed-up | peak MB | recognised |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["t_target"]
        ref_t = ref["t_target"] or ref["train_s"]
        sp = f"{ref_t / t:.2f}x" if t else "-"
        t_txt = f"{t:.1f}" if t else f"not reached (> {r['train_s']:.1f})"
        print(f"| {r['label']} | {r['epochs']} | {r['train_s']:.1f} | {r['train_loss']:.2f} | "
              f"{r['test_loss']:.2f} | {t_txt} | {sp} | {r['peak_mb']:.0f} | {r['recognised']:.1%} |")
    if ref["t_target"] is None:
        print(f"(the reference never reached {TARGET}; its speed-up base is its full training time)")
    print("\nper-epoch (epoch, test loss, cumulative train s):")
    for r in results:
        print(f"  {r['name']}: {r['per_epoch']}")


if __name__ == "__main__":
    main()
