"""The Python API: the one facade that both the CLI and users' scripts call.

    import genlab
    run = genlab.train("vae", dataset="mnist", epochs=10, out="runs/my-vae")
    images = run.sample(64, seed=0)          # (64, 1, 28, 28) floats in [0, 1]
    run.save_samples(64, "samples.png")
    print(run.evaluate(iw_samples=100))
    run = genlab.load("runs/my-vae")         # Run.load

    gan = genlab.train("gan", dataset="mnist", time_budget=600, out="runs/my-gan")
    sevens = gan.sample(16, seed=0, label=7)  # class-conditional (the default recipe)
    print(gan.evaluate(n_samples=10_000))    # FID[genlab-mnist], KID, precision/recall, floors
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import __version__
from .data import ImageData, fetch as _fetch, list_datasets, load_images
from .errors import GenlabError
from .metrics.classifier import get_classifier
from .metrics.elbo import iwae_nll, negative_elbo
from .metrics.images import compare, fid, gaussian_stats
from .models.int8 import quantize_int8
from .models.vae import ARCHS as VAE_ARCHS, VAEConfig, build_vae
from .plots import save_array, save_grid, save_loss_plot
from .runs import RunDir, default_run_dir
from .train.loop import LoopConfig, fit
from .train.vae import VAETask
from .models.gan import ARCHS as GAN_ARCHS, GANConfig, build_gan
from .train.gan import LOSSES as GAN_LOSSES, GANTask, to_signed as gan_to_float

from .data.text import CORPORA, list_corpora, load_corpus
from .lmrun import LMRun, train_lm

IMAGE_FAMILIES = ("vae", "gan")
FAMILIES = IMAGE_FAMILIES + ("lm",)

# The lecture's settings are the defaults of --arch mlp; --arch conv has its own recipe.
VAE_DEFAULTS = {
    "mlp": {"latent_dim": 20, "lr": 1e-3, "batch_size": 128, "schedule": "constant"},
    "conv": {"latent_dim": 32, "lr": 2e-3, "batch_size": 128, "schedule": "cosine", "hidden": 512},
}

# GANs: `mlp` is the lecture's (its unstated lr / batch / scaling: 2e-4, 100, [-1, 1]),
# `dcgan` Radford et al.'s recipe, `sngan` genlab's CPU recipe (see models/gan.py, README).
GAN_DEFAULTS = {
    "mlp": {"loss": "bce", "lr": 2e-4, "lr_d": None, "betas": (0.9, 0.999), "batch_size": 100,
            "schedule": "constant", "z_dim": 100, "width": 64, "ema_decay": 0.0, "hidden": 256,
            "conditional": False},
    "dcgan": {"loss": "ns", "lr": 2e-4, "lr_d": None, "betas": (0.5, 0.999), "batch_size": 64,
              "schedule": "constant", "z_dim": 100, "width": 64, "ema_decay": 0.0, "conditional": False},
    "sngan": {"loss": "hinge", "lr": 2e-4, "lr_d": 4e-4, "betas": (0.0, 0.9), "batch_size": 64,
              "schedule": "constant", "z_dim": 100, "width": 32, "ema_decay": 0.999, "conditional": None},
}


def _check(cond, msg):
    if not cond:
        raise GenlabError(msg)


def train(family: str = "vae", dataset: str = "mnist", out=None, *, arch: str | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          latent_dim: int | None = None, beta: float = 1.0, schedule: str | None = None,
          seed: int = 0, time_budget: float | None = None, resume: bool = False,
          overwrite: bool = False, image_size: int | None = None, channels: int | None = None,
          progress: bool | None = None, log=print, **gan_options):
    """Train a model and return its Run. `epochs=None` means 10, or until `time_budget`
    seconds are spent when a budget is given. `resume=True` continues the run in `out`.

    family "vae": arch mlp (the lecture's) | conv; latent_dim, beta.
    family "gan": arch sngan (genlab's recipe, default) | dcgan | mlp (the lecture's);
    gan_options: loss, lr_d, z_dim, width, ema, conditional (see GAN_DEFAULTS).
    family "lm": a GPT on a text corpus; see lmrun.train_lm for its options (corpus=...,
    recipe, tokenizer, n_layer, max_iters, ...). Returns an LMRun.
    """
    _check(family in FAMILIES, f"unknown model family '{family}' (available: {', '.join(FAMILIES)})")
    if family == "lm":
        image_only = {"arch": arch, "epochs": epochs, "latent_dim": latent_dim, "schedule": schedule,
                      "image_size": image_size, "channels": channels}
        bad = [k for k, v in image_only.items() if v is not None] + (["beta"] if beta != 1.0 else [])
        _check(not bad, f"options for image models only: {', '.join(bad)}")
        _check(dataset == "mnist", "a language model trains on a corpus= (shakespeare, austen, kjv, text:PATH), not a dataset")
        return train_lm(out=out, seed=seed, resume=resume, overwrite=overwrite, progress=progress, log=log,
                        time_budget=time_budget, batch_size=batch_size, lr=lr, **gan_options)
    if resume:
        _check(out is not None, "--resume needs --out RUN (the run to continue)")
        return _resume(RunDir(out), family, epochs, time_budget, progress, log)
    if family == "vae":
        _check(not gan_options, f"options for GANs only: {', '.join(sorted(gan_options))}")
        arch = arch or "mlp"
        _check(arch in VAE_ARCHS, f"unknown VAE architecture '{arch}' (available: {', '.join(VAE_ARCHS)})")
        d = VAE_DEFAULTS[arch]
    else:
        _check(latent_dim is None and beta == 1.0, "--latent-dim and --beta are VAE options (a GAN has --z-dim)")
        arch = arch or "sngan"
        _check(arch in GAN_ARCHS, f"unknown GAN architecture '{arch}' (available: {', '.join(GAN_ARCHS)})")
        d = GAN_DEFAULTS[arch]
    lr = d["lr"] if lr is None else lr
    batch_size = d["batch_size"] if batch_size is None else batch_size
    schedule = d["schedule"] if schedule is None else schedule
    if epochs is None and time_budget is None:
        epochs = 10
    _check(epochs is None or (isinstance(epochs, int) and epochs >= 1), f"epochs must be a whole number >= 1, not {epochs}")
    _check(isinstance(batch_size, int) and batch_size >= 1, f"batch size must be a whole number >= 1, not {batch_size}")
    _check(lr > 0, f"learning rate must be > 0, not {lr}")
    _check(time_budget is None or time_budget > 0, f"time budget must be > 0 seconds, not {time_budget}")
    _check(schedule in ("constant", "cosine", "linear"), f"unknown schedule '{schedule}' (constant, cosine, linear)")
    train_cfg = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "schedule": schedule,
                 "seed": seed, "time_budget": time_budget}
    if family == "vae":
        latent_dim = d["latent_dim"] if latent_dim is None else latent_dim
        _check(isinstance(latent_dim, int) and latent_dim >= 1, f"latent dim must be a whole number >= 1, not {latent_dim}")
        _check(beta >= 0, f"beta must be >= 0, not {beta}")
        train_cfg["beta"] = beta
    else:
        g = _gan_options(arch, d, gan_options)

    data = load_images(dataset, image_size=image_size, channels=channels)
    c, h, w = data.shape
    _check(h == w, f"{dataset}: images must be square, got {h}x{w}")
    if arch in ("conv", "dcgan", "sngan"):
        _check(h in (28, 32), f"--arch {arch} needs 28x28 or 32x32 images, {dataset} has {h}x{w} (use --image-size)")
    if family == "vae":
        mcfg = VAEConfig(arch=arch, channels=c, image_size=h, latent_dim=latent_dim,
                         hidden=d.get("hidden", VAEConfig.hidden))
        what = f"{arch} VAE"
    else:
        conditional = g.pop("conditional")
        if conditional is None:
            conditional = arch == "sngan" and data.train_y is not None and data.num_classes > 1
        _check(not conditional or arch == "sngan", "--conditional needs --arch sngan")
        _check(not conditional or (data.train_y is not None and data.num_classes > 1),
               f"--conditional needs a labelled dataset; {dataset} has no classes")
        mcfg = GANConfig(arch=arch, channels=c, image_size=h, z_dim=g.pop("z_dim"), width=g.pop("width"),
                         hidden=d.get("hidden", GANConfig.hidden),
                         num_classes=data.num_classes if conditional else 0, ema=g["ema_decay"] > 0)
        train_cfg.update(g)
        what = f"{'class-conditional ' if conditional else ''}{arch} GAN"
    run = RunDir(out if out is not None else default_run_dir(family, dataset))
    run.prepare_new(overwrite=overwrite)
    config = {
        "family": family, "genlab_version": __version__, "model": mcfg.to_dict(),
        "data": {"dataset": dataset, "image_size": h, "channels": c, "classes": list(data.classes)},
        "train": train_cfg,
    }
    run.write_config(config)
    log(f"training a {what} on {data.describe()} -> {run.path}")
    return _fit(run, config, data, resume=False, progress=progress, log=log)


def _gan_options(arch: str, d: dict, opts: dict) -> dict:
    known = {"loss", "lr_d", "z_dim", "width", "ema_decay", "conditional", "betas"}
    unknown = sorted(k for k, v in opts.items() if k not in known)
    _check(not unknown, f"unknown GAN options: {', '.join(unknown)}")
    o = {k: (d.get(k) if opts.get(k) is None else opts[k]) for k in known}
    _check(o["loss"] in GAN_LOSSES, f"unknown GAN loss '{o['loss']}' (available: {', '.join(GAN_LOSSES)})")
    _check(arch != "mlp" or o["loss"] == "bce",
           "--arch mlp is the lecture's network with a Sigmoid output: it trains with --loss bce")
    _check(arch == "mlp" or o["loss"] != "bce",
           f"--arch {arch} outputs logits: use --loss ns (the same loss, stable) or hinge")
    _check(o["lr_d"] is None or o["lr_d"] > 0, f"--lr-d must be > 0, not {o['lr_d']}")
    _check(isinstance(o["z_dim"], int) and o["z_dim"] >= 1, f"--z-dim must be a whole number >= 1, not {o['z_dim']}")
    _check(isinstance(o["width"], int) and o["width"] >= 2, f"--width must be a whole number >= 2, not {o['width']}")
    _check(0 <= o["ema_decay"] < 1, f"--ema-decay must be in [0, 1), not {o['ema_decay']}")
    o["betas"] = list(o["betas"])
    return o


def _resume(run: RunDir, family: str, epochs, time_budget, progress, log) -> "Run":
    if not run.is_run():
        raise GenlabError(f"{run.path}: no run to resume (no config.json)")
    config = run.read_config()
    _check(config.get("family") == family,
           f"{run.path}: a '{config.get('family')}' run, not a '{family}' run"
           + (f" (resume it with genlab train {config.get('family')})" if config.get("family") in FAMILIES else ""))
    _check(run.has_state(), f"{run.path}: nothing to resume (no state.pt)")
    # Check everything that can be wrong before writing anything.
    state = run.load_state()
    model = _build_model(run.path, config)
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
    d = config["data"]
    data = load_images(d["dataset"], image_size=d["image_size"], channels=d["channels"])
    _check_data_fits(run.path, config, data)
    run.write_config(config)
    log(f"resuming {run.path}")
    return _fit(run, config, data, resume=True, progress=progress, log=log, model=model)


def _build_model(path, config: dict):
    try:
        if config["family"] == "vae":
            return build_vae(VAEConfig(**config["model"]))
        return build_gan(GANConfig(**config["model"]))
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise GenlabError(f"{path}/config.json: invalid model config ({e})") from None


def _check_data_fits(path, config: dict, data: ImageData) -> None:
    """The dataset's images must be the size and depth the model was built for."""
    m = config["model"]
    want = (m["channels"], m["image_size"], m["image_size"])
    _check(tuple(data.shape) == want,
           f"{data.name}: images are {'x'.join(map(str, data.shape))} (CxHxW), but the model in "
           f"{path} was built for {'x'.join(map(str, want))}")


def _fit(run: RunDir, config: dict, data: ImageData, resume: bool, progress, log, model=None) -> "Run":
    """Train (a fresh model, or `model` with its weights loaded when resuming)."""
    t = config["train"]
    family = config["family"]
    if model is None:
        torch.manual_seed(t["seed"])  # model initialisation
        model = _build_model(run.path, config)
    if family == "vae":
        task = VAETask(model, data, lr=t["lr"], beta=t["beta"], schedule=t["schedule"], seed=t["seed"])
        to_float, title = ImageData.to_float, f"{config['model']['arch']} VAE on {config['data']['dataset']}"
        keys = ("train_loss", "test_loss")
    else:
        clf = get_classifier(data) if data.train_y is not None and data.num_classes > 1 else None
        task = GANTask(model, data, loss=t["loss"], lr_g=t["lr"], lr_d=t["lr_d"] or t["lr"],
                       betas=t["betas"], ema_decay=t["ema_decay"], schedule=t["schedule"],
                       classifier=clf, seed=t["seed"])
        to_float, title = gan_to_float, f"{config['model']['arch']} GAN on {config['data']['dataset']}"
        keys = ("train_loss", "g_loss")
    loop = LoopConfig(epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
                      time_budget=t["time_budget"], progress=progress)
    summary = fit(run, task, data.train_x, data.train_y, loop, to_float, resume=resume, log=log)
    save_loss_plot(run.read_metrics(), run.path / "loss.png", keys=keys, title=title,
                   labels={"train_loss": "D loss" if family == "gan" else "train loss", "g_loss": "G loss"},
                   ylabel="loss" if family == "gan" else "loss (nats / image)")
    log(f"run saved in {run.path} (samples/ per epoch, loss.png, metrics.jsonl)")
    r = Run(run.path)
    r.summary = summary
    return r


class Run:
    """A trained run directory, with its model rebuilt from config.json + model.safetensors.

    Works for every image family: `sample`, `interpolate` and `evaluate` for VAEs and
    GANs; `reconstruct` and the likelihood bounds for VAEs (a GAN has no encoder)."""

    def __init__(self, path):
        self.dir = RunDir(path).require()
        self.path = self.dir.path
        self.config = self.dir.read_config()
        self.summary = None
        self.family = self.config.get("family")
        if self.family not in IMAGE_FAMILIES:
            raise GenlabError(f"{self.path}: a '{self.family}' run; this works on image models "
                              f"({', '.join(IMAGE_FAMILIES)})"
                              + ("; for a language model use genlab generate / chat / eval" if self.family == "lm" else ""))
        self.model = _build_model(self.path, self.config)
        if self.config.get("compress", {}).get("quantize"):
            quantize_int8(_image_target(self.model, self.family))
        self.dir.load_weights(self.model)
        self.model.eval()

    @classmethod
    def load(cls, path) -> "Run":
        return cls(path)

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim if self.family == "vae" else self.model.cfg.z_dim

    @property
    def num_classes(self) -> int:
        return self.model.cfg.num_classes if self.family == "gan" else 0

    def _require(self, family: str, what: str) -> None:
        _check(self.family == family, f"{self.path}: a '{self.family}' run; {what} works on {family.upper()} runs only")

    def _data(self) -> ImageData:
        d = self.config["data"]
        data = load_images(d["dataset"], image_size=d["image_size"], channels=d["channels"])
        _check_data_fits(self.path, self.config, data)
        return data

    @torch.no_grad()
    def _decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.family == "vae":
            return self.model.decode(z)
        return self.model.generate(z, y)

    def _labels(self, n: int, label, g: torch.Generator) -> torch.Tensor | None:
        if not self.num_classes:
            _check(label is None, f"{self.path}: an unconditional model; --class needs a class-conditional GAN")
            return None
        classes = self.config["data"].get("classes") or []
        if label is None:
            return torch.randint(0, self.num_classes, (n,), generator=g)
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            _check(label in classes, f"unknown class '{label}' (classes: {', '.join(classes)})")
            label = classes.index(label)
        label = int(label)
        _check(0 <= label < self.num_classes, f"--class must be in 0..{self.num_classes - 1}, not {label}")
        return torch.full((n,), label, dtype=torch.long)

    # -- generation ------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, label=None) -> torch.Tensor:
        """n new images (N, C, H, W) in [0, 1], decoded from z ~ N(0, I). For a
        class-conditional GAN, `label` (index or class name) fixes the class; by
        default classes are drawn uniformly."""
        _check(isinstance(n, int) and n >= 1, f"--n must be a whole number >= 1, not {n}")
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        y = self._labels(n, label, g)
        out = []
        for i in range(0, n, 1000):
            z = torch.randn(min(1000, n - i), self.latent_dim, generator=g)
            out.append(self._decode(z, None if y is None else y[i:i + 1000]))
        return torch.cat(out)

    def save_samples(self, n: int, out, seed: int | None = None, label=None) -> Path:
        return _save_images(self.sample(n, seed, label=label), out)

    @torch.no_grad()
    def reconstruct(self, n: int = 32, seed: int = 0) -> torch.Tensor:
        """Test images and their reconstructions (decoded posterior means), interleaved by row."""
        self._require("vae", "reconstruct (it needs an encoder)")
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
        """Rows that walk linearly through latent space: for a VAE between the codes of
        two test images, for a GAN between two random latents (same class per row)."""
        _check(isinstance(pairs, int) and pairs >= 1, f"--pairs must be >= 1, not {pairs}")
        _check(isinstance(steps, int) and steps >= 2, f"--steps must be >= 2, not {steps}")
        g = torch.Generator().manual_seed(seed)
        y = None
        if self.family == "vae":
            data = self._data()
            idx = torch.randperm(len(data.test_x), generator=g)[:2 * pairs]
            mu, _ = self.model.encode(ImageData.to_float(data.test_x[idx]))
            if len(mu) < 2 * pairs:
                raise GenlabError(f"--pairs {pairs} needs {2 * pairs} test images; the test split has {len(mu)}")
            a, b = mu[:pairs], mu[pairs:2 * pairs]
        else:
            a = torch.randn(pairs, self.latent_dim, generator=g)
            b = torch.randn(pairs, self.latent_dim, generator=g)
            yr = self._labels(pairs, None, g)
            y = None if yr is None else yr.repeat_interleave(steps)
        t = torch.linspace(0, 1, steps).view(1, steps, 1)
        z = a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t        # (pairs, steps, d)
        return self._decode(z.reshape(pairs * steps, -1), y)

    # -- evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, iw_samples: int = 100, n_test: int | None = None, n_samples: int = 10_000,
                 seed: int = 0, classifier: bool = True, inception: str | None = None,
                 log=None) -> dict:
        """Sample quality in the dataset classifier's features -- FID, KID, precision and
        recall against training images, each beside its real-data floor (held-out test
        images against the same training images), class coverage and recognised share --
        and for a VAE also the test negative ELBO and IWAE NLL (K = iw_samples). With
        `inception` (a local weights path) also the Inception FID. The result is appended
        to metrics.jsonl."""
        _check(isinstance(iw_samples, int) and iw_samples >= 1, f"--iw-samples must be >= 1, not {iw_samples}")
        _check(isinstance(n_samples, int) and n_samples >= 2, f"--n-samples must be a whole number >= 2, not {n_samples}")
        inc = load_inception(inception) if inception else None  # fail early on a bad path
        data = self._data()
        res = {"kind": "eval", "family": self.family, "dataset": data.name}
        if self.family == "vae":
            x = data.test_x if n_test is None else data.test_x[:n_test]
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                res["n_test"] = len(x)
                ev = negative_elbo(self.model, x, ImageData.to_float)
                res.update({"test_neg_elbo": ev["loss"], "test_bce": ev["bce"], "test_kld": ev["kld"]})
                res[f"test_iwae_nll_k{iw_samples}"] = iwae_nll(self.model, x, ImageData.to_float, k=iw_samples)
        if classifier or inc is not None:
            samples = self.sample(n_samples, seed=seed)
        if classifier:
            _check(data.train_y is not None and data.num_classes > 1,
                   f"{data.name} has no labels, so there is no dataset classifier for the image "
                   "metrics (use --no-classifier)")
            res.update(image_metrics(get_classifier(data), data, samples, seed=seed))
        if inc is not None:
            res.update(inception_fid(inc, data, samples, seed=seed, log=log))
        self.dir.append_metrics(res)
        return res


def train_features(clf, data: ImageData) -> torch.Tensor:
    """The classifier's features of every training image (in chunks of 5,000)."""
    return torch.cat([clf.features(ImageData.to_float(data.train_x[i:i + 5000]))
                      for i in range(0, len(data.train_x), 5000)])


def image_metrics(clf, data: ImageData, samples: torch.Tensor, seed: int = 0, k: int = 3) -> dict:
    """FID/KID/precision/recall of `samples` in `clf`'s features, each beside the
    real-data floor, plus class coverage. The reference is len(samples) training images
    (FID: the statistics of all of them); the floor compares as many held-out test
    images (all of them when there are fewer) with the same reference."""
    n = len(samples)
    g = torch.Generator().manual_seed(seed)
    ref_idx = torch.randperm(len(data.train_x), generator=g)[:n]
    train_feats = train_features(clf, data)
    ref_stats = gaussian_stats(train_feats)
    ref = train_feats[ref_idx]
    test_idx = torch.randperm(len(data.test_x), generator=g)[:n]
    fake = compare(ref, clf.features(samples), ref_stats, k=k, seed=seed)
    floor = compare(ref, clf.features(ImageData.to_float(data.test_x[test_idx])), ref_stats, k=k, seed=seed)
    tag = clf.label
    share = clf.class_share(samples)
    rec = clf.recognised(samples)
    out = {"feature_space": tag, "classifier_test_accuracy": clf.test_accuracy, "n_samples": n,
           "n_real_floor": len(test_idx), "k_nn": k}
    for key, name in (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall")):
        out[f"{name}[{tag}]"] = fake[key]
        out[f"{name}[{tag}] real-data floor"] = floor[key]
    out[f"KID[{tag}] std"] = fake["kid_std"]
    out["FID ratio to floor"] = fake["fid"] / max(floor["fid"], 1e-12)
    out["samples_recognised"] = rec["recognised"]
    out["class_share"] = [round(s, 4) for s in share]
    out["class_share_min"] = min(share)
    out["class_share_max"] = max(share)
    out["classes"] = list(data.classes)
    return out


def inception_fid(inc, data: ImageData, samples: torch.Tensor, seed: int = 0, log=None) -> dict:
    """Inception FID (the standard one) of `samples` against as many training images,
    beside the real-data floor (test images)."""
    n = len(samples)
    g = torch.Generator().manual_seed(seed)
    ref_idx = torch.randperm(len(data.train_x), generator=g)[:n]
    test_idx = torch.randperm(len(data.test_x), generator=g)[:n]

    def feats(images):
        return torch.cat([inc(images[i:i + 100]) for i in range(0, len(images), 100)])

    ref = feats(ImageData.to_float(data.train_x[ref_idx]))
    return {"FID[inception]": fid(ref, feats(samples)),
            "FID[inception] real-data floor": fid(ref, feats(ImageData.to_float(data.test_x[test_idx]))),
            "n_inception": n}


def _save_images(images: torch.Tensor, out, per_row: int | None = None) -> Path:
    out = Path(out)
    if out.suffix.lower() == ".png":
        return save_grid(images, out, nrow=per_row)
    if out.suffix.lower() == ".npy":
        return save_array(images, out)
    raise GenlabError(f"{out}: output must end in .png (a grid) or .npy (an array)")


def load(path):
    """Load a run directory: a Run for image models, an LMRun for language models, a
    FinetunedModel for fine-tuning runs, a RewardModel for reward models."""
    d = RunDir(path).require()
    fam = d.read_config().get("family")
    if fam == "lm":
        return LMRun(path)
    if fam == "finetune":
        from .llm.finetune import load_finetuned
        return load_finetuned(path)
    if fam == "reward":
        from .llm.reward import RewardModel
        return RewardModel(path)
    return Run(path)


def load_model(spec: str, log=print):
    """Any language model: a genlab run, `smollm2`, a Hugging Face directory (or, online,
    a Hub id), a fine-tuning run or a PEFT adapter directory. All share stream / generate /
    new_chat / reply."""
    from .llm.finetune import load_text_model
    return load_text_model(spec, log=log)


def models() -> list[dict]:
    """The built-in foundation models and whether they are installed / converted."""
    from .llm.hf import list_models
    return list_models()


def finetune(model: str, data: str, out=None, **kw):
    """Fine-tune a foundation model or a genlab run (see genlab.llm.finetune)."""
    from .llm.finetune import finetune as _finetune
    return _finetune(model, data, out, **kw)


def merge(run, out=None, overwrite: bool = False, log=print) -> Path:
    """Fold a LoRA run's adapter into the base weights (a Hugging Face directory)."""
    from .llm.finetune import merge as _merge
    return _merge(run, out, overwrite=overwrite, log=log)


def export(run, out, format: str = "hf", overwrite: bool = False, log=print) -> Path:
    """A genlab GPT run (or a fine-tuning run) as a Hugging Face directory."""
    _check(format == "hf", f"unknown export format '{format}' (available: hf)")
    fam = RunDir(run).require().read_config().get("family")
    if fam == "finetune":
        return merge(run, out, overwrite=overwrite, log=log)
    _check(fam == "lm", f"{run}: a '{fam}' run; export --format hf takes language-model runs")
    from .llm.export import export_hf
    return export_hf(run, out, overwrite=overwrite, log=log)


# -- compression ------------------------------------------------------------------------

def compress(model: str, out, *, prune: float | None = None, structured: bool = False,
             quantize: str | None = None, distill: bool = False, student: str | None = None,
             finetune_steps: int = 0, steps: int | None = None, time_budget: float | None = None,
             temperature: float = 2.0, alpha: float = 0.9, lr: float | None = None, smooth: float | None = None,
             eval_tokens: int | None = None, batch: int | None = None, gen_tokens: int = 64,
             fid_samples: int = 2000, seed: int = 0, overwrite: bool = False, progress=None,
             log=print) -> dict:
    """Prune, quantize (int8) and/or distil `model` -- a genlab GPT run, `smollm2` or a
    Hugging Face directory, a VAE or GAN run -- into `out`, then measure the original and
    the compressed model side by side. Returns the report: {"rows": [...], "table": str}
    (also written to out/report.json and out/report.md)."""
    from .compress.quantize import DEFAULT_ALPHA
    from .compression import compress_lm, model_kind
    kind, where = model_kind(model)
    smooth = DEFAULT_ALPHA if smooth is None else smooth
    if kind in IMAGE_FAMILIES:
        from .compress import check_options
        check_options(kind, prune=prune, structured=structured, quantize=quantize, distill=distill,
                      student=student, finetune_steps=finetune_steps, temperature=temperature, alpha=alpha,
                      smooth=smooth, steps=steps, time_budget=time_budget)
        return _compress_images(where, out, kind, prune=prune, quantize=quantize, smooth=smooth, batch=batch or 256,
                                fid_samples=fid_samples, overwrite=overwrite, log=log)
    return compress_lm(model, out, kind=kind, where=where, prune=prune, structured=structured,
                       quantize=quantize, distill=distill, student=student, finetune_steps=finetune_steps,
                       steps=steps, time_budget=time_budget, temperature=temperature, alpha=alpha, lr=lr,
                       smooth=smooth, eval_tokens=eval_tokens, batch=batch, gen_tokens=gen_tokens, seed=seed,
                       overwrite=overwrite, progress=progress, log=log)


def _image_target(model, family: str):
    """The part of an image model that compression changes: the whole VAE; a GAN's
    sampling generator (the discriminator is not used once trained)."""
    return model if family == "vae" else model.sampler


def _compress_images(src, out, family: str, *, prune, quantize, smooth: float, batch: int, fid_samples: int,
                     overwrite: bool, log) -> dict:
    import copy
    from .compress.lm import count_weights
    from .compress.prune import magnitude_prune, sparsity
    from .compress.report import image_rows, write_report
    from .compression import _prepare_out
    orig = Run(src)
    quantized = bool(orig.config.get("compress", {}).get("quantize"))
    _check(not (quantized and quantize), f"{src}: already quantized to int8; compress the run it came from")
    _check(not (quantized and prune), f"{src}: an int8 model cannot be pruned; start from the float run it came from")
    _check(isinstance(fid_samples, int) and fid_samples >= 2, f"--fid-samples must be >= 2, not {fid_samples}")
    out = _prepare_out(out, src, overwrite)
    model = copy.deepcopy(orig.model)
    target = _image_target(model, family)
    info = {"source": str(orig.path), "source_params": count_weights(target)}
    if prune:
        magnitude_prune(target, prune)
        z, n = sparsity(target)
        log(f"magnitude pruning: {z:,} of {n:,} prunable weights are zero ({z / n:.1%})")
        info["prune"] = {"amount": prune, "structured": False, "zeros": z, "prunable": n, "sparsity": z / n}
    if quantize:
        from .compress.quantize import int8
        g = torch.Generator().manual_seed(0)
        if family == "vae":
            data = orig._data()
            x = ImageData.to_float(data.train_x[torch.randperm(len(data.train_x), generator=g)[:512]])
            batches = lambda: model(x)   # noqa: E731
        else:
            z = torch.randn(512, orig.latent_dim, generator=g)
            batches = lambda: target(z, orig._labels(512, None, g))   # noqa: E731
        n, pt = int8(target, batches, smooth)
        log(f"int8: {n} Linear layers quantized (convolutions stay float32), per-token activations in {pt}; "
            f"smoothing alpha {smooth:g}; calibrated on 512 {'training images' if family == 'vae' else 'latents'}")
        info.update(quantize=quantize, smooth_alpha=smooth, per_token_layers=pt)
    run = RunDir(out)
    run.prepare_new(overwrite=overwrite)
    for stale in ("report.json", "report.md"):
        if (run.path / stale).exists():
            (run.path / stale).unlink()
    run.write_config({**orig.config, "compress": {**orig.config.get("compress", {}), **info}})
    run.save_weights(model)
    new = Run(out)
    data = orig._data()
    ref = None
    if family == "gan":
        _check(data.train_y is not None and data.num_classes > 1,
               f"{data.name} has no labels, so there is no dataset classifier for the FID")
        clf = get_classifier(data)
        ref = train_features(clf, data)
    log(f"measuring: latency of {'decoding' if family == 'vae' else 'generating'} at batch 1 and {batch}; "
        + ("test loss (negative ELBO, nats per image)" if family == "vae"
           else f"FID in the dataset classifier's features ({fid_samples} samples)"))
    entries = []
    for name, r in (("original", orig), ("compressed", new)):
        if family == "vae":
            quality = {"test_loss": negative_elbo(r.model, data.test_x, ImageData.to_float)["loss"]}
        else:
            quality = {"fid": fid(ref, clf.features(r.sample(fid_samples, seed=0)))}
        g = torch.Generator().manual_seed(0)
        decode = (lambda z, r=r, g=g: r._decode(z, r._labels(len(z), None, g)))
        entries.append((name, decode, quality, r.path / "model.safetensors",
                        count_weights(_image_target(r.model, family))))
    rows = image_rows(entries, orig.latent_dim, batch)
    return write_report(out, rows, {"model": str(src), "family": family})


def fetch(name: str) -> Path:
    """Download / unpack / verify a built-in dataset or corpus into the cache."""
    if name in CORPORA:
        from .data.text import _cache_file
        load_corpus(name)
        return _cache_file(name)
    return _fetch(name)


def corpora() -> list[dict]:
    return list_corpora()


def datasets() -> list[dict]:
    return list_datasets()


def save_images(images: torch.Tensor, out, per_row: int | None = None) -> Path:
    """Write images (N, C, H, W) in [0, 1] as a PNG grid (.png) or float32 array (.npy)."""
    return _save_images(images, out, per_row)


def load_inception(path):
    """The FID Inception network from a local weights file (genlab never downloads it)."""
    from .metrics.inception import load_inception as _load
    return _load(path)


def dataset_classifier(dataset: str):
    """The cached classifier for a labelled dataset (trained once if missing)."""
    return get_classifier(load_images(dataset))

