"""GAN benchmark: the lecture's GAN as written, then genlab's three architectures side by
side at equal wall-clock time, on MNIST and Fashion-MNIST, measured in one run.

    python benchmarks/gan.py                         # both datasets, 600 s per row
    python benchmarks/gan.py --datasets mnist --budget 120 --n-samples 5000   # quicker

Each row runs in its own subprocess, one after the other (never two at once). Rows:
  lecture script      the lecture's code verbatim (networks, BCE, Adam lr 2e-4, batch 100,
                      images Normalize((0.5,), (0.5,)) to [-1, 1], torchvision-style loader),
                      10 epochs; sampled as its show_generated_images does (G in train mode)
  genlab mlp          genlab's copy of the lecture's GAN, 10 epochs (the match)
  mlp / dcgan / sngan genlab --arch X --time-budget BUDGET (the same seconds each; the budget
                      counts wall time of the loop, per-epoch sample grids and FID included)
Columns: wall s (training loop), iterations, FID / KID / precision / recall in genlab's
dataset-classifier features (FID[genlab-DATASET]; not Inception FID) of N samples against
N training images; the real-data floor (N held-out test images against the same
training images) printed beneath; the smallest and largest share of samples the classifier
assigns to one class (uniform = 10%); the share recognised with p > 0.9; peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(dataset: str, epochs: int = 10, seed: int = 0):
    """The lecture's GAN, verbatim, with a torchvision-style MNIST loader."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.optim as optim
    from PIL import Image
    from torch.autograd import Variable

    from genlab.data import load_images

    data = load_images(dataset)

    class MNIST(torch.utils.data.Dataset):  # torchvision.datasets.MNIST.__getitem__
        def __init__(self, x, y, transform):
            self.data, self.targets, self.transform = x[:, 0], y, transform

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            img, target = self.data[index], int(self.targets[index])
            img = Image.fromarray(img.numpy(), mode="L")
            return self.transform(img), target

    def transform(pic):  # transforms.Compose([ToTensor(), Normalize((0.5,), (0.5,))])
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
        return (img.to(dtype=torch.float32).div(255) - 0.5) / 0.5

    # --- the lecture's code, verbatim -------------------------------------------------
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

    torch.manual_seed(seed)
    learning_rate, batch_size = 2e-4, 100  # unstated in the lecture: genlab's defaults
    train_loader = torch.utils.data.DataLoader(MNIST(data.train_x, data.train_y, transform),
                                               batch_size=batch_size, shuffle=True)
    discriminator = Discriminator()
    generator = Generator()
    criterion = nn.BCELoss()
    d_optimizer = optim.Adam(discriminator.parameters(), lr=learning_rate)
    g_optimizer = optim.Adam(generator.parameters(), lr=learning_rate)
    t0 = time.perf_counter()
    iters = 0
    for epoch in range(epochs):
        for i, (images, _) in enumerate(train_loader):
            current_batch_size = images.size(0)
            real_images = Variable(images.view(current_batch_size, -1))
            real_labels = Variable(torch.ones(current_batch_size, 1))
            fake_labels = Variable(torch.zeros(current_batch_size, 1))
            outputs = discriminator(real_images)
            d_loss_real = criterion(outputs, real_labels)
            z = Variable(torch.randn(current_batch_size, 100))
            fake_images = generator(z)
            outputs = discriminator(fake_images)
            d_loss_fake = criterion(outputs, fake_labels)
            d_loss = d_loss_real + d_loss_fake
            d_optimizer.zero_grad()
            g_optimizer.zero_grad()
            d_loss.backward()
            d_optimizer.step()
            z = Variable(torch.randn(current_batch_size, 100))
            fake_images = generator(z)
            outputs = discriminator(fake_images)
            g_loss = criterion(outputs, real_labels)
            d_optimizer.zero_grad()
            g_optimizer.zero_grad()
            g_loss.backward()
            g_optimizer.step()
            iters += 1
        print(f"Epoch [{epoch + 1}/{epochs}], d_loss: {d_loss.item():.4f}, g_loss: {g_loss.item():.4f}",
              file=sys.stderr)
    wall = time.perf_counter() - t0

    def sample(n, seed=0):  # as show_generated_images: G left in train mode
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad(), torch.random.fork_rng():
            out = [generator(torch.randn(100, 100, generator=g)) for _ in range(0, n, 100)]
        return ((torch.cat(out)[:n].view(-1, 1, 28, 28) + 1) / 2)

    return {"wall": wall, "iterations": iters, "epochs": epochs, "sample": sample}


def genlab_row(dataset: str, out: str, **kw):
    import genlab

    run = genlab.train("gan", dataset=dataset, out=out, overwrite=True, progress=False,
                       log=lambda m: print(m, file=sys.stderr), **kw)
    epochs = [r for r in run.dir.read_metrics() if r.get("kind") == "epoch"]
    return {"wall": run.summary["wall_seconds"], "iterations": epochs[-1]["iterations"],
            "epochs": epochs[-1]["epoch"] - 1 + epochs[-1].get("partial", 1.0),
            "sample": lambda n, seed=0: run.sample(n, seed=seed), "run": run}


def rows(budget: float):
    return {
        "reference": ("lecture script as written, 10 epochs", lambda d, out: reference(d)),
        "mlp-10ep": ("genlab --arch mlp --epochs 10 (the lecture's GAN)",
                     lambda d, out: genlab_row(d, out, arch="mlp", epochs=10)),
        "mlp": (f"genlab --arch mlp --time-budget {budget:g}",
                lambda d, out: genlab_row(d, out, arch="mlp", time_budget=budget)),
        "dcgan": (f"genlab --arch dcgan --time-budget {budget:g}",
                  lambda d, out: genlab_row(d, out, arch="dcgan", time_budget=budget)),
        "sngan": (f"genlab --time-budget {budget:g} (sngan, genlab's recipe)",
                  lambda d, out: genlab_row(d, out, arch="sngan", time_budget=budget)),
    }


def one(name: str, dataset: str, out: str, budget: float, n_samples: int) -> dict:
    import torch

    from genlab.api import image_metrics
    from genlab.data import load_images
    from genlab.metrics.classifier import get_classifier

    label, fn = rows(budget)[name]
    res = fn(dataset, out)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data = load_images(dataset)
    clf = get_classifier(data)
    samples = res["sample"](n_samples, seed=0)
    m = image_metrics(clf, data, samples, seed=0)
    if "run" in res:
        res["run"].dir.append_metrics({"kind": "eval", **m})
    else:  # keep the reference's samples to look at
        from genlab.plots import save_grid
        os.makedirs(out, exist_ok=True)
        save_grid(samples[:64], os.path.join(out, "samples.png"))
    tag = clf.label
    return {"name": name, "label": label, "dataset": dataset, "wall": res["wall"],
            "iterations": res["iterations"], "epochs": res["epochs"], "peak_mb": peak_mb,
            "fid": m[f"FID[{tag}]"], "fid_floor": m[f"FID[{tag}] real-data floor"],
            "kid": m[f"KID[{tag}]"], "kid_floor": m[f"KID[{tag}] real-data floor"],
            "precision": m[f"precision[{tag}]"], "precision_floor": m[f"precision[{tag}] real-data floor"],
            "recall": m[f"recall[{tag}]"], "recall_floor": m[f"recall[{tag}] real-data floor"],
            "share_min": m["class_share_min"], "share_max": m["class_share_max"],
            "class_share": m["class_share"], "recognised": m["samples_recognised"],
            "threads": torch.get_num_threads(), "tag": tag}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per equal-time row (default 600)")
    ap.add_argument("--n-samples", type=int, default=10_000, help="samples per metric (default 10000)")
    ap.add_argument("--rows", default="reference,mlp-10ep,mlp,dcgan,sngan")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench-gan"), help="where runs go")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        r = one(a.one, a.dataset, os.path.join(a.out, f"{a.dataset}-{a.one}"), a.budget, a.n_samples)
        print(json.dumps(r))
        return
    results = []
    for dataset in a.datasets.split(","):
        for name in a.rows.split(","):
            print(f"running {dataset} / {name} ...", file=sys.stderr, flush=True)
            p = subprocess.run([sys.executable, __file__, "--one", name, "--dataset", dataset,
                                "--out", a.out, "--budget", str(a.budget), "--n-samples", str(a.n_samples)],
                               stdout=subprocess.PIPE, text=True, check=True)
            results.append(json.loads(p.stdout.strip().splitlines()[-1]))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(results, f, indent=1)
    for dataset in a.datasets.split(","):
        rs = [r for r in results if r["dataset"] == dataset]
        tag = rs[0]["tag"]
        print(f"\nGAN on {dataset}, {os.cpu_count()} cores ({rs[0]['threads']} torch threads), "
              f"{a.n_samples} samples vs {a.n_samples} training images, metrics in {tag} features")
        print(f"| run | wall s | iterations | epochs | FID[{tag}] | FID / floor | KID[{tag}] | precision | recall "
              "| min class share | max class share | recognised | peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            print(f"| {r['label']} | {r['wall']:.0f} | {r['iterations']} | {r['epochs']:.1f} | {r['fid']:.2f} | "
                  f"{r['fid'] / r['fid_floor']:.1f}x | {r['kid']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                  f"{r['share_min']:.1%} | {r['share_max']:.1%} | {r['recognised']:.1%} | {r['peak_mb']:.0f} |")
        f = rs[0]
        print(f"| real-data floor (test vs train images) | | | | {f['fid_floor']:.2f} | 1.0x | {f['kid_floor']:.3f} "
              f"| {f['precision_floor']:.3f} | {f['recall_floor']:.3f} | | | | |")
        print("class shares (per class, in class order):")
        for r in rs:
            print(f"  {r['name']}: {' '.join(f'{s:.1%}' for s in r['class_share'])}")


if __name__ == "__main__":
    main()
