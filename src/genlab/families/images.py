"""What the image families (vae, gan, and any image generator after them) share: the
options of an image trainer, the run directory they write, the training call, and
`ImageRun` -- a trained generator that samples, interpolates and is evaluated the same
way whatever its family. A family module supplies the model, its task and a subclass.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import ImageData, load_images
from ..metrics.classifier import get_classifier
from ..metrics.inception import load_inception
from ..metrics.quality import image_metrics, inception_fid
from ..models.int8 import quantize_int8
from ..plots import save_array, save_grid, save_loss_plot
from ..runs import RunDir, default_run_dir
from ..train.engine import Engine
from ..train.loop import LoopConfig, fit
from ..train.optim import SCHEDULES
from ..util.errors import GenlabError, check
from ..util.io import check_writable
from ..util.memory import check_memory
from ..util.options import Opt, above, at_least, in_range
from ..util.version import __version__
from .base import FAMILIES, Family, invalid_config

# The options every image trainer takes, each family setting its own defaults and help.
DATASET = Opt("dataset", str, "mnist", help="mnist (default), fashion-mnist, folder:PATH, npy:PATH")
EPOCHS = Opt("epochs", int, check=at_least(1), label="epochs",
             help="epochs to train (default 10; with --time-budget alone: until the budget is spent)")
BATCH_SIZE = Opt("batch_size", int, check=at_least(1), label="batch size")
LR = Opt("lr", float, check=above(0), label="learning rate")
SCHEDULE = Opt("schedule", str, choices=SCHEDULES, what="schedule")
IMAGE_SIZE = Opt("image_size", int, check=at_least(1), help="folder:/npy: data: resize to SxS")
CHANNELS = Opt("channels", int, choices=(1, 3), what="channel count", help="folder:/npy: data: 1 or 3")
IMAGE_OPTIONS = (IMAGE_SIZE, CHANNELS)

def parse_seeds(spec) -> list[int]:
    """Seeds from "0-35", "1,5,9", "0-3,10" (stylegan2-ada's notation) or a list of ints."""
    if isinstance(spec, (list, tuple, range)):
        seeds = [int(s) for s in spec]
    else:
        seeds = []
        for part in str(spec).split(","):
            part = part.strip()
            a, dash, b = part.partition("-")
            if not (a.isdigit() and (not dash or b.isdigit())):
                raise GenlabError(f"--seeds {spec}: '{part}' is not a seed or a range A-B of seeds (e.g. 0-35,40)")
            if dash:
                check(int(a) <= int(b), f"--seeds {spec}: the range {part} runs backwards")
                seeds += list(range(int(a), int(b) + 1))
            else:
                seeds.append(int(a))
    check(seeds, "--seeds: no seeds given")
    check(all(0 <= s < 2**32 for s in seeds), f"--seeds {spec}: seeds are whole numbers in 0..{2**32 - 1}")
    return seeds


# What the sampling verbs take, checked the same way from Python and the CLI.
TRUNC = Opt("trunc", float, check=in_range(-2, 2, closed=True), label="--trunc",
            help="style-based generators: truncation psi (1 = none, 0 = the mean w; default 1)")
N = Opt("n", int, 64, check=at_least(1), label="--n", help="number of samples (default 64)")
PAIRS = Opt("pairs", int, 8, check=at_least(1), label="--pairs", help="rows (default 8)")
STEPS = Opt("steps", int, 10, check=at_least(2), label="--steps", help="images per row (default 10)")
N_SAMPLES = Opt("n_samples", int, 10_000, check=at_least(2), label="--n-samples",
                help="generated samples (and real images) for the image metrics (default 10000)")
IW_SAMPLES = Opt("iw_samples", int, 100, check=at_least(1), label="--iw-samples",
                 help="VAE: K for the IWAE bound (default 100)")


def save_images(images: torch.Tensor, out, per_row: int | None = None) -> Path:
    """Write images (N, C, H, W) in [0, 1] as a PNG grid (.png) or float32 array (.npy)."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        return save_grid(images, out, nrow=per_row)
    if out.suffix.lower() == ".npy":
        return save_array(images, out)
    raise GenlabError(f"{out}: output must end in .png (a grid) or .npy (an array)")


def check_output(out, n: int, model: dict) -> None:
    """Refuse, before anything is computed, an output that cannot be written: a wrong
    suffix, a folder that is not there or not writable, or more images than memory holds."""
    out = Path(out)
    check(out.suffix.lower() in (".png", ".npy"), f"{out}: output must end in .png (a grid) or .npy (an array)")
    check_writable(out)
    # the samples, then the grid or the array written from them
    check_memory(3 * 4 * n * int(model["channels"]) * int(model.get("out_size") or model["image_size"]) ** 2,
                 f"--n {n} ({out.suffix.lower()[1:]})", hint="ask for fewer images")


def check_fits(path, config: dict, data: ImageData) -> None:
    """The dataset's images must be the size and depth the model was built for."""
    m = config["model"]
    size = m.get("out_size") or m["image_size"]   # (a generator may work at a larger size and crop)
    want = (m["channels"], size, size)
    check(tuple(data.shape) == want,
          f"{data.name}: images are {'x'.join(map(str, data.shape))} (CxHxW), but the model in "
          f"{path} was built for {'x'.join(map(str, want))}")


def run_data(path, config: dict) -> ImageData:
    d = config["data"]
    data = load_images(d["dataset"], image_size=d["image_size"], channels=d["channels"])
    check_fits(path, config, data)
    return data


class ImageFamily(Family):
    """An image generator trained for epochs over an in-memory dataset."""

    loss_keys = ("train_loss",)
    loss_labels: dict = {}
    ylabel = "loss"

    def build(self, path, config: dict) -> torch.nn.Module:
        """The (untrained) model that config.json describes."""
        raise NotImplementedError

    def task(self, model, data: ImageData, config: dict):
        raise NotImplementedError

    def load_data(self, opts: dict) -> ImageData:
        data = load_images(opts["dataset"], image_size=opts.get("image_size"), channels=opts.get("channels"))
        c, h, w = data.shape
        check(h == w, f"{opts['dataset']}: images must be square, got {h}x{w}")
        return data

    def new_run(self, out, opts: dict, data: ImageData, model_cfg, train_cfg: dict, what: str, log):
        """Write config.json of a new run and train it."""
        c, h, _ = data.shape
        run = RunDir(out if out is not None else default_run_dir(self.name, opts["dataset"]))
        run.prepare_new(overwrite=opts.get("overwrite", False))
        config = {"family": self.name, "genlab_version": __version__, "model": model_cfg.to_dict(),
                  "data": {"dataset": opts["dataset"], "image_size": h, "channels": c, "classes": list(data.classes)},
                  "train": train_cfg}
        run.write_config(config)
        log(f"training a {what} on {data.describe()} -> {run.path}")
        return self._fit(run, config, data, opts, resume=False, log=log)

    def resume(self, run, config, state, changes, opts, log):
        model = self.build(run.path, config)
        run.load_weights(model)
        t = config["train"]
        if changes.get("epochs") is not None:
            t["epochs"] = changes["epochs"]
        if changes.get("time_budget") is not None:
            t["time_budget"] = changes["time_budget"]
        elif t.get("time_budget") is not None and float(state["elapsed"]) >= t["time_budget"]:
            # The budget (the run's total) is spent: continuing means training without one.
            check(t.get("epochs") is not None,
                  f"{run.path}: its time budget of {t['time_budget']:g}s is spent; give a larger "
                  "--time-budget (the run's total seconds) or --epochs to continue")
            log(f"the run's time budget of {t['time_budget']:g}s is spent; continuing to epoch "
                f"{t['epochs']} without one")
            t["time_budget"] = None
        data = run_data(run.path, config)
        run.write_config(config)
        log(f"resuming {run.path}")
        return self._fit(run, config, data, opts, resume=True, log=log, model=model)

    def _fit(self, run: RunDir, config: dict, data: ImageData, opts: dict, resume: bool, log, model=None):
        t = config["train"]
        engine = Engine.create(opts.get("device"))
        if model is None:
            engine.seed(t["seed"])  # model initialisation
            model = self.build(run.path, config)
        model.to(engine.device)
        task = self.task(model, data, config)
        loop = LoopConfig(epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
                          time_budget=t["time_budget"], progress=opts.get("progress"))
        summary = fit(run, task, data.train_x, data.train_y, loop, self.batch_transform(config), resume=resume,
                      log=log, engine=engine)
        save_loss_plot(run.read_metrics(), run.path / "loss.png", keys=self.loss_keys,
                       title=f"{config['model']['arch']} {self.title} on {config['data']['dataset']}",
                       labels=self.loss_labels, ylabel=self.ylabel)
        log(f"run saved in {run.path} (samples/ per epoch, loss.png, metrics.jsonl)")
        r = self.load(run.path)
        r.summary = summary
        return r

    @staticmethod
    def to_float(x: torch.Tensor) -> torch.Tensor:
        return ImageData.to_float(x)

    def batch_transform(self, config: dict):
        """uint8 batch -> the model's float input."""
        return self.to_float


class ImageRun:
    """A trained image generator: its model rebuilt from config.json + model.safetensors.
    `sample`, `interpolate` and `evaluate` work for every image family; a subclass
    supplies the decoder (`_decode`), the latent size and the interpolation endpoints."""

    family_plugin: ImageFamily  # set by each subclass
    kind = "image"
    truncatable = False         # a style-based generator can pull w towards its mean

    def __init__(self, path, device: str | None = "cpu"):
        self.family_plugin.open_run(self, path)
        self.family = self.config.get("family")
        self.model = self.family_plugin.build(self.path, self.config)
        if self.config.get("compress", {}).get("quantize"):
            quantize_int8(self.compress_target())
        self.dir.load_weights(self.model)
        self.device = Engine.create(device).device
        self.model.to(self.device).eval()

    @classmethod
    def load(cls, path) -> "ImageRun":
        """The run at `path`, opened by its family's subclass."""
        fam = FAMILIES.get(RunDir(path).require().read_config().get("family"))
        run = fam.load(path) if fam is not None else None
        if not isinstance(run, ImageRun):
            raise GenlabError(f"{path}: {fam.a_run if fam else 'a run of an unknown family'}; "
                              "this works on image models")
        return run

    # -- what a subclass supplies ---------------------------------------------------------
    latent_dim: int = 0
    num_classes: int = 0

    def _decode(self, z: torch.Tensor, y: torch.Tensor | None = None, **style) -> torch.Tensor:
        raise NotImplementedError

    def _endpoints(self, pairs: int, g: torch.Generator):
        """(a, b, labels per row) for interpolate."""
        raise NotImplementedError

    def _likelihood(self, data: ImageData, iw_samples: int, n_test, seed: int) -> dict:
        """Family-specific evaluation (a VAE's likelihood bounds); {} by default."""
        return {}

    def compress_target(self) -> torch.nn.Module:
        """The part of the model that compression changes (by default all of it)."""
        return self.model

    def reconstruct(self, n: int = 32, seed: int = 0) -> torch.Tensor:
        raise GenlabError(f"{self.path}: {self.family_plugin.a_run}; reconstruct (it needs an encoder) "
                          "works on VAE runs only")

    # -- shared -------------------------------------------------------------------------
    def _data(self) -> ImageData:
        return run_data(self.path, self.config)

    def _labels(self, n: int, label, g: torch.Generator) -> torch.Tensor | None:
        if not self.num_classes:
            check(label is None, f"{self.path}: an unconditional model; --class needs a class-conditional GAN")
            return None
        classes = self.config["data"].get("classes") or []
        if label is None:
            return torch.randint(0, self.num_classes, (n,), generator=g)
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            check(label in classes, f"unknown class '{label}' (classes: {', '.join(classes)})")
            label = classes.index(label)
        label = int(label)
        check(0 <= label < self.num_classes, f"--class must be in 0..{self.num_classes - 1}, not {label}")
        return torch.full((n,), label, dtype=torch.long)

    @torch.no_grad()
    def _decode_cpu(self, z, y=None, **style) -> torch.Tensor:
        return self._decode(z.to(self.device), None if y is None else y.to(self.device), **style).cpu()

    def _style(self, trunc, trunc_cutoff) -> dict:
        if trunc is None and trunc_cutoff is None:
            return {}
        check(self.truncatable, f"{self.path}: {self.family_plugin.a_run}; --trunc needs a style-based generator "
                                "(it pulls w towards the mean w)")
        TRUNC.validate(trunc)
        check(trunc_cutoff is None or (isinstance(trunc_cutoff, int) and trunc_cutoff >= 1),
              f"--trunc-cutoff must be a whole number >= 1, not {trunc_cutoff}")
        return {"trunc": trunc, "trunc_cutoff": trunc_cutoff}

    def seed_latents(self, seeds, label=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z, labels) for seeds: each seed's latent, then its class, from a generator seeded with it alone."""
        zs, ys = [], []
        for s in parse_seeds(seeds):
            g = torch.Generator().manual_seed(s)
            zs.append(torch.randn(1, self.latent_dim, generator=g))
            ys.append(self._labels(1, label, g))
        return torch.cat(zs), None if ys[0] is None else torch.cat(ys)

    @torch.no_grad()
    def sample(self, n: int | None = None, seed: int | None = None, label=None, seeds=None, trunc: float | None = None,
               trunc_cutoff: int | None = None) -> torch.Tensor:
        """n new images (N, C, H, W) in [0, 1], decoded from z ~ N(0, I). For a
        class-conditional model, `label` (index or class name) fixes the class; by
        default classes are drawn uniformly. `seeds` (a list or "0-35,40"): one image per
        seed, its latent (and class) drawn from that seed alone, as stylegan2-ada does.
        `trunc` (style-based generators): psi, pulling w towards its mean."""
        style = self._style(trunc, trunc_cutoff)
        if seeds is not None:
            z, y = self.seed_latents(seeds, label)
            return torch.cat([self._decode_cpu(z[i:i + 1000], None if y is None else y[i:i + 1000], **style)
                              for i in range(0, len(z), 1000)])
        N.validate(n)
        check(n is not None, "give --n N (or --seeds)")
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        y = self._labels(n, label, g)
        out = []
        for i in range(0, n, 1000):
            z = torch.randn(min(1000, n - i), self.latent_dim, generator=g)
            out.append(self._decode_cpu(z, None if y is None else y[i:i + 1000], **style))
        return torch.cat(out)

    def save_samples(self, n: int | None, out, seed: int | None = None, label=None, seeds=None,
                     trunc: float | None = None, trunc_cutoff: int | None = None) -> Path:
        """Write samples to FILE.png (a grid), FILE.npy (an array) or DIR/ (one PNG per image:
        seedNNNN.png with --seeds, else NNNN.png)."""
        parsed = parse_seeds(seeds) if seeds is not None else None
        check(parsed is None or n is None, "give --n or --seeds, not both")
        n = 64 if parsed is None and n is None else n
        count = len(parsed) if parsed is not None else n
        N.validate(count)
        self._style(trunc, trunc_cutoff)
        if Path(out).suffix == "":
            check_output(Path(out) / "x.png", count, self.config["model"])
            images = self.sample(n, seed, label=label, seeds=parsed, trunc=trunc, trunc_cutoff=trunc_cutoff)
            names = [f"seed{s:04d}.png" for s in parsed] if parsed is not None else [f"{i:04d}.png" for i in range(count)]
            for name, im in zip(names, images):
                save_grid(im[None], Path(out) / name, nrow=1, pad=0)
            return Path(out)
        check_output(out, count, self.config["model"])
        return save_images(self.sample(n, seed, label=label, seeds=parsed, trunc=trunc, trunc_cutoff=trunc_cutoff), out)

    def save_reconstructions(self, n: int = 32, out=None, seed: int = 0) -> Path:
        """Test images and their reconstructions in alternate rows, written to `out`
        (default RUN/reconstructions.png)."""
        out = out or self.path / "reconstructions.png"
        N.validate(n)
        check_output(out, 2 * n, self.config["model"])
        return save_images(self.reconstruct(n, seed=seed), out, per_row=8)

    def save_interpolation(self, pairs: int = 8, steps: int = 10, out=None, seed: int = 0, space: str = "z") -> Path:
        """One latent walk per row, written to `out` (default RUN/interpolation.png)."""
        out = out or self.path / "interpolation.png"
        PAIRS.validate(pairs)
        STEPS.validate(steps)
        check_output(out, pairs * steps, self.config["model"])
        images = self.interpolate(pairs, steps, seed=seed) if space == "z" else \
            self.interpolate(pairs, steps, seed=seed, space=space)
        return save_images(images, out, per_row=steps)

    @torch.no_grad()
    def interpolate(self, pairs: int = 8, steps: int = 10, seed: int = 0, space: str = "z") -> torch.Tensor:
        """Rows that walk linearly through latent space (for a VAE between the codes of
        two test images, for a GAN between two random latents, same class per row)."""
        check(space == "z", f"{self.path}: {self.family_plugin.a_run}; --space {space} needs a style-based "
                            "generator (only it has a W space)")
        PAIRS.validate(pairs)
        STEPS.validate(steps)
        g = torch.Generator().manual_seed(seed)
        a, b, yr = self._endpoints(pairs, g)
        y = None if yr is None else yr.repeat_interleave(steps)
        t = torch.linspace(0, 1, steps).view(1, steps, 1)
        z = a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t        # (pairs, steps, d)
        return self._decode_cpu(z.reshape(pairs * steps, -1), y)

    @torch.no_grad()
    def evaluate(self, iw_samples: int = 100, n_test: int | None = None, n_samples: int = 10_000,
                 seed: int = 0, classifier: bool = True, inception: str | None = None,
                 log=None, metrics=None) -> dict:
        """Sample quality in the dataset classifier's features -- FID, KID, precision and
        recall against training images, each beside its real-data floor (held-out test
        images against the same training images), class coverage and recognised share --
        and the family's own figures (a VAE's test negative ELBO and IWAE NLL, K =
        iw_samples). With `inception` (a local weights path) also the Inception FID. The
        result is appended to metrics.jsonl. `metrics` (e.g. "fid,kid,pr,ppl_wend,ls")
        chooses among those the run's family offers (`metric_names`)."""
        IW_SAMPLES.validate(iw_samples)
        N_SAMPLES.validate(n_samples)
        names = self._metric_list(metrics)
        inc = load_inception(inception) if inception else None  # fail early on a bad path
        data = self._data()
        res = {"kind": "eval", "family": self.family, "dataset": data.name}
        if names is None:
            res.update(self._likelihood(data, iw_samples, n_test, seed))
        else:
            classifier = classifier and bool({"fid", "kid", "pr"} & set(names))
        if classifier or inc is not None:
            samples = self.sample(n_samples, seed=seed)
        if classifier:
            check(data.train_y is not None and data.num_classes > 1,
                  f"{data.name} has no labels, so there is no dataset classifier for the image "
                  "metrics (use --no-classifier)")
            res.update(image_metrics(get_classifier(data), data, samples, seed=seed))
        if inc is not None:
            res.update(inception_fid(inc, data, samples, seed=seed))
        extra = [m for m in names or () if m not in ("fid", "kid", "pr")]
        if extra:
            res.update(self.extra_metrics(extra, data, seed=seed, n=n_samples))
        self.dir.append_metrics(res)
        return res

    metric_names = ("fid", "kid", "pr")

    def _metric_list(self, metrics):
        if metrics is None:
            return None
        names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
        bad = [m for m in names if m not in self.metric_names]
        check(names and not bad, f"--metrics: {', '.join(bad) or 'none given'} not available for "
                                 f"{self.family_plugin.a_run} (available: {', '.join(self.metric_names)})")
        return names

    def extra_metrics(self, names, data: ImageData, seed: int, n: int) -> dict:
        return {}


def build_checked(path, build, cfg_class, config: dict):
    """build(cfg_class(**config["model"])), any failure a clear config error."""
    try:
        return build(cfg_class(**config["model"]))
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise invalid_config(path, e) from None
