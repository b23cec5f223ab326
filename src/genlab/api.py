"""The Python API: the one facade that both the CLI and users' scripts call.

    import genlab
    run = genlab.train("vae", dataset="mnist", epochs=10, out="runs/my-vae")
    images = run.sample(64, seed=0)          # (64, 1, 28, 28) floats in [0, 1]
    run.save_samples(64, "samples.png")
    print(run.evaluate(iw_samples=100))
    run = genlab.load("runs/my-vae")         # Run.load
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from . import __version__
from .data import ImageData, fetch as _fetch, list_datasets, load_images
from .errors import GenlabError
from .metrics.classifier import get_classifier
from .metrics.elbo import iwae_nll, negative_elbo
from .models.vae import ARCHS as VAE_ARCHS, VAEConfig, build_vae
from .plots import save_array, save_grid, save_loss_plot
from .runs import RunDir
from .train.loop import LoopConfig, fit
from .train.vae import VAETask

FAMILIES = ("vae",)

# The lecture's settings are the defaults of --arch mlp; --arch conv has its own recipe.
VAE_DEFAULTS = {
    "mlp": {"latent_dim": 20, "lr": 1e-3, "batch_size": 128, "schedule": "constant"},
    "conv": {"latent_dim": 32, "lr": 2e-3, "batch_size": 128, "schedule": "cosine", "hidden": 512},
}


def _check(cond, msg):
    if not cond:
        raise GenlabError(msg)


def _default_out(family: str, dataset: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{family}-{Path(dataset.split(':', 1)[-1]).name}").strip("-")
    out, i = Path("runs") / stem, 2
    while RunDir(out).is_run():
        out, i = Path("runs") / f"{stem}-{i}", i + 1
    return out


def train(family: str = "vae", dataset: str = "mnist", out=None, *, arch: str = "mlp",
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          latent_dim: int | None = None, beta: float = 1.0, schedule: str | None = None,
          seed: int = 0, time_budget: float | None = None, resume: bool = False,
          overwrite: bool = False, image_size: int | None = None, channels: int | None = None,
          progress: bool | None = None, log=print) -> "Run":
    """Train a model and return its Run. `epochs=None` means 10, or until `time_budget`
    seconds are spent when a budget is given. `resume=True` continues the run in `out`."""
    _check(family in FAMILIES, f"unknown model family '{family}' (available: {', '.join(FAMILIES)})")
    if resume:
        _check(out is not None, "--resume needs --out RUN (the run to continue)")
        return _resume(RunDir(out), epochs, time_budget, progress, log)
    _check(arch in VAE_ARCHS, f"unknown VAE architecture '{arch}' (available: {', '.join(VAE_ARCHS)})")
    d = VAE_DEFAULTS[arch]
    latent_dim = d["latent_dim"] if latent_dim is None else latent_dim
    lr = d["lr"] if lr is None else lr
    batch_size = d["batch_size"] if batch_size is None else batch_size
    schedule = d["schedule"] if schedule is None else schedule
    if epochs is None and time_budget is None:
        epochs = 10
    _check(epochs is None or (isinstance(epochs, int) and epochs >= 1), f"epochs must be a whole number >= 1, not {epochs}")
    _check(isinstance(batch_size, int) and batch_size >= 1, f"batch size must be a whole number >= 1, not {batch_size}")
    _check(lr > 0, f"learning rate must be > 0, not {lr}")
    _check(isinstance(latent_dim, int) and latent_dim >= 1, f"latent dim must be a whole number >= 1, not {latent_dim}")
    _check(beta >= 0, f"beta must be >= 0, not {beta}")
    _check(time_budget is None or time_budget > 0, f"time budget must be > 0 seconds, not {time_budget}")
    _check(schedule in ("constant", "cosine", "linear"), f"unknown schedule '{schedule}' (constant, cosine, linear)")

    data = load_images(dataset, image_size=image_size, channels=channels)
    c, h, w = data.shape
    _check(h == w, f"{dataset}: images must be square, got {h}x{w}")
    if arch == "conv":
        _check(h in (28, 32), f"--arch conv needs 28x28 or 32x32 images, {dataset} has {h}x{w} (use --image-size)")
    run = RunDir(out if out is not None else _default_out(family, dataset))
    run.prepare_new(overwrite=overwrite)
    mcfg = VAEConfig(arch=arch, channels=c, image_size=h, latent_dim=latent_dim,
                     hidden=d.get("hidden", VAEConfig.hidden))
    config = {
        "family": family, "genlab_version": __version__, "model": mcfg.to_dict(),
        "data": {"dataset": dataset, "image_size": h, "channels": c, "classes": list(data.classes)},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "beta": beta,
                  "schedule": schedule, "seed": seed, "time_budget": time_budget},
    }
    run.write_config(config)
    log(f"training a {arch} VAE on {data.describe()} -> {run.path}")
    return _fit(run, config, data, resume=False, progress=progress, log=log)


def _resume(run: RunDir, epochs, time_budget, progress, log) -> "Run":
    if not run.is_run():
        raise GenlabError(f"{run.path}: no run to resume (no config.json)")
    config = run.read_config()
    _check(config["family"] in FAMILIES, f"{run.path}: cannot resume a '{config['family']}' run here")
    _check(run.has_state(), f"{run.path}: nothing to resume (no state.pt)")
    # Check everything that can be wrong before writing anything.
    state = run.load_state()
    try:
        model = build_vae(VAEConfig(**config["model"]))
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise GenlabError(f"{run.path}/config.json: invalid model config ({e})") from None
    run.load_weights(model)
    t = config["train"]
    if epochs is not None:
        t["epochs"] = epochs
    if time_budget is not None:
        t["time_budget"] = time_budget
    elif t.get("time_budget") is not None and float(state["elapsed"]) >= t["time_budget"]:
        # The budget (the run's total) is spent: continuing means training without one.
        _check(t.get("epochs") is not None,
               f"{run.path}: its time budget of {t['time_budget']:g}s is spent; give a larger "
               "--time-budget (the run's total seconds) or --epochs to continue")
        log(f"the run's time budget of {t['time_budget']:g}s is spent; continuing to epoch "
            f"{t['epochs']} without one")
        t["time_budget"] = None
    run.write_config(config)
    d = config["data"]
    data = load_images(d["dataset"], image_size=d["image_size"], channels=d["channels"])
    log(f"resuming {run.path}")
    return _fit(run, config, data, resume=True, progress=progress, log=log, model=model)


def _fit(run: RunDir, config: dict, data: ImageData, resume: bool, progress, log, model=None) -> "Run":
    """Train (a fresh model, or `model` with its weights loaded when resuming)."""
    t = config["train"]
    if model is None:
        torch.manual_seed(t["seed"])  # model initialisation
        model = build_vae(VAEConfig(**config["model"]))
    task = VAETask(model, data, lr=t["lr"], beta=t["beta"], schedule=t["schedule"], seed=t["seed"])
    loop = LoopConfig(epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
                      time_budget=t["time_budget"], progress=progress)
    summary = fit(run, task, data.train_x, data.train_y, loop, ImageData.to_float, resume=resume, log=log)
    save_loss_plot(run.read_metrics(), run.path / "loss.png",
                   title=f"{config['model']['arch']} VAE on {config['data']['dataset']}")
    log(f"run saved in {run.path} (samples/ per epoch, loss.png, metrics.jsonl)")
    r = Run(run.path)
    r.summary = summary
    return r


class Run:
    """A trained run directory, with its model rebuilt from config.json + model.safetensors."""

    def __init__(self, path):
        self.dir = RunDir(path).require()
        self.path = self.dir.path
        self.config = self.dir.read_config()
        self.summary = None
        family = self.config.get("family")
        if family != "vae":
            raise GenlabError(f"{self.path}: a '{family}' run; this command handles: {', '.join(FAMILIES)}")
        try:
            mcfg = VAEConfig(**self.config["model"])
            self.model = build_vae(mcfg)
        except (TypeError, KeyError, ValueError, RuntimeError) as e:
            raise GenlabError(f"{self.path}/config.json: invalid model config ({e})") from None
        self.dir.load_weights(self.model)
        self.model.eval()

    @classmethod
    def load(cls, path) -> "Run":
        return cls(path)

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    def _data(self) -> ImageData:
        d = self.config["data"]
        return load_images(d["dataset"], image_size=d["image_size"], channels=d["channels"])

    # -- generation ------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n new images (N, C, H, W) in [0, 1], decoded from z ~ N(0, I)."""
        _check(isinstance(n, int) and n >= 1, f"--n must be a whole number >= 1, not {n}")
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        out = []
        for i in range(0, n, 1000):
            z = torch.randn(min(1000, n - i), self.latent_dim, generator=g)
            out.append(self.model.decode(z))
        return torch.cat(out)

    def save_samples(self, n: int, out, seed: int | None = None) -> Path:
        return _save_images(self.sample(n, seed), out)

    @torch.no_grad()
    def reconstruct(self, n: int = 32, seed: int = 0) -> torch.Tensor:
        """Test images and their reconstructions (decoded posterior means), interleaved by row."""
        _check(isinstance(n, int) and n >= 1, f"--n must be a whole number >= 1, not {n}")
        data = self._data()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.test_x), generator=g)[:n]
        x = ImageData.to_float(data.test_x[idx])
        mu, _ = self.model.encode(x)
        rec = self.model.decode(mu)
        per_row = 8
        rows = []
        for i in range(0, len(x), per_row):
            rows += [x[i:i + per_row], rec[i:i + per_row]]
        return torch.cat(rows)

    @torch.no_grad()
    def interpolate(self, pairs: int = 8, steps: int = 10, seed: int = 0) -> torch.Tensor:
        """Rows that walk linearly in latent space between the codes of two test images."""
        _check(isinstance(pairs, int) and pairs >= 1, f"--pairs must be >= 1, not {pairs}")
        _check(isinstance(steps, int) and steps >= 2, f"--steps must be >= 2, not {steps}")
        data = self._data()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.test_x), generator=g)[:2 * pairs]
        mu, _ = self.model.encode(ImageData.to_float(data.test_x[idx]))
        a, b = mu[:pairs], mu[pairs:2 * pairs]
        t = torch.linspace(0, 1, steps).view(1, steps, 1)
        z = a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t        # (pairs, steps, d)
        return self.model.decode(z.reshape(pairs * steps, -1))

    # -- evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, iw_samples: int = 100, n_test: int | None = None, n_samples: int = 1000,
                 seed: int = 0, classifier: bool = True) -> dict:
        """Test negative ELBO, IWAE NLL (K = iw_samples) and sample recognition; the
        result is appended to metrics.jsonl."""
        _check(isinstance(iw_samples, int) and iw_samples >= 1, f"--iw-samples must be >= 1, not {iw_samples}")
        data = self._data()
        x = data.test_x if n_test is None else data.test_x[:n_test]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            res = {"kind": "eval", "dataset": data.name, "n_test": len(x)}
            ev = negative_elbo(self.model, x, ImageData.to_float)
            res.update({"test_neg_elbo": ev["loss"], "test_bce": ev["bce"], "test_kld": ev["kld"]})
            res[f"test_iwae_nll_k{iw_samples}"] = iwae_nll(self.model, x, ImageData.to_float, k=iw_samples)
        if classifier and data.train_y is not None:
            clf = get_classifier(data)
            rec = clf.recognised(self.sample(n_samples, seed=seed))
            res.update({"classifier": f"genlab-{data.name}", "classifier_test_accuracy": clf.test_accuracy,
                        "n_samples": n_samples, "samples_recognised": rec["recognised"],
                        "class_share": rec["class_share"]})
        self.dir.append_metrics(res)
        return res


def _save_images(images: torch.Tensor, out) -> Path:
    out = Path(out)
    if out.suffix.lower() == ".png":
        return save_grid(images, out)
    if out.suffix.lower() == ".npy":
        return save_array(images, out)
    raise GenlabError(f"{out}: output must end in .png (a grid) or .npy (an array)")


def load(path) -> Run:
    """Load a run directory (same as Run.load)."""
    return Run(path)


def fetch(name: str) -> Path:
    """Download / unpack / verify a built-in dataset into the cache."""
    return _fetch(name)


def datasets() -> list[dict]:
    return list_datasets()


def save_images(images: torch.Tensor, out) -> Path:
    """Write images (N, C, H, W) in [0, 1] as a PNG grid (.png) or float32 array (.npy)."""
    return _save_images(images, out)


def dataset_classifier(dataset: str):
    """The cached classifier for a labelled dataset (trained once if missing)."""
    return get_classifier(load_images(dataset))

