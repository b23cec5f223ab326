"""What the image families (vae, gan, and any image generator after them) share: the
options of an image trainer, the run directory they write, the training call, and
`ImageRun` -- a trained generator that samples, interpolates and is evaluated the same
way whatever its family. A family module supplies the model, its task and a subclass.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..data import ImageData, load_images
from ..data.captions import CAPTIONED, prompt_info, prompt_set
from ..encoders.text import ENCODERS, MAX_WORDS, MINILM_MAX_TOKENS, WordVocab, minilm, minilm_too_long
from ..metrics.classifier import get_classifier
from ..metrics.inception import load_inception
from ..metrics.prompts import prompt_metrics
from ..metrics.quality import image_metrics, inception_fid
from ..metrics.stats import wilson
from ..models.int8 import quantize_int8
from ..plots import save_array, save_grid, save_loss_plot
from ..runs import HUMAN_EVAL, RunDir, default_run_dir
from ..train.condition import KINDS, make_conditioner, text_spec
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
CONDITION = Opt("condition", str, choices=KINDS, what="condition",
                help="none, class (the label) or text (a caption; needs captioned data: "
                     f"{', '.join(CAPTIONED)}, or folder:PATH with metadata.jsonl / captions.txt)")
TEXT_ENCODER = Opt("text_encoder", str, choices=ENCODERS, what="text encoder",
                   help="--condition text: minilm (frozen all-MiniLM-L6-v2, default) or learned (word vectors "
                        "trained with the model)")
CONDITION_OPTIONS = (CONDITION, TEXT_ENCODER)
NO_CAPTIONS = (f"(captioned: {', '.join(CAPTIONED)}, or folder:PATH with a metadata.jsonl or captions.txt)")

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
            help="style-based generators: truncation psi (1 = none, 0 = the mean w -- of the class or text asked "
                 "for, in a conditional run; default 1)")
N = Opt("n", int, 64, check=at_least(1), label="--n", help="number of samples (default 64)")
PAIRS = Opt("pairs", int, 8, check=at_least(1), label="--pairs", help="rows (default 8)")
STEPS = Opt("steps", int, 10, check=at_least(2), label="--steps", help="images per row (default 10)")
N_SAMPLES = Opt("n_samples", int, 10_000, check=at_least(2), label="--n-samples",
                help="generated samples (and real images) for the image metrics (default 10000)")
IW_SAMPLES = Opt("iw_samples", int, 100, check=at_least(1), label="--iw-samples",
                 help="VAE: K for the IWAE bound (default 100)")
PER_PROMPT = Opt("per_prompt", int, 100, check=at_least(1), label="--per-prompt",
                 help="eval --prompts: samples per prompt (default 100)")


def note(msg: str) -> None:
    print(f"genlab: note: {msg}", file=sys.stderr, flush=True)


def read_prompts(spec, data: ImageData | None = None, dataset: str = "") -> list[str]:
    """Prompts from a list, a text file (one per line; blank lines skipped) or a built-in
    set ("train" / "heldout", see data/captions.py)."""
    if isinstance(spec, (list, tuple)):
        prompts = [str(p) for p in spec]
    elif spec in ("train", "heldout") and not Path(spec).exists():
        prompts = prompt_set(dataset, spec, data)
    else:
        p = Path(spec)
        check(p.is_file(), f"{p}: no such prompts file (one prompt per line; or the built-in sets train, heldout)")
        try:
            prompts = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        except UnicodeDecodeError:
            raise GenlabError(f"{p}: not a UTF-8 text file") from None
    check(prompts, f"{spec}: no prompts in it")
    for p in prompts:
        check(isinstance(p, str) and p.strip(), "an empty prompt (give some text)")
    return prompts


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

    def task(self, model, data: ImageData, config: dict, cond):
        """The training task; `cond` (train/condition.py) gives the images' conditions."""
        raise NotImplementedError

    def resolve_condition(self, o: dict, data: ImageData, default: str) -> dict:
        """config["condition"] from --condition / --text-encoder (`default` when not given,
        "class" only when the data has labels); refused for data that cannot carry it."""
        labelled = data.train_y is not None and data.num_classes > 1
        kind = o.get("condition") or (default if default != "class" or labelled else "none")
        check(kind != "class" or labelled, f"--condition class needs a labelled dataset; {o['dataset']} has no classes")
        if kind != "text":
            check(o.get("text_encoder") is None, "--text-encoder goes with --condition text")
            return {"kind": kind}
        check(data.has_captions, f"--condition text needs images with captions; {o['dataset']} has none "
                                 + NO_CAPTIONS)
        return text_spec(data, o.get("text_encoder") or "minilm")

    @staticmethod
    def condition_fields(spec: dict, data: ImageData) -> dict:
        """The model-config fields of a condition: num_classes, text_dim, vocab_size."""
        if spec["kind"] == "class":
            return {"num_classes": data.num_classes}
        if spec["kind"] == "text":
            return {"text_dim": spec["dim"], "vocab_size": len(spec.get("vocab") or ())}
        return {}

    def stored(self, config, key):
        cond = config.get("condition") or {}
        if key == "condition":
            return cond.get("kind") or ("class" if config["model"].get("num_classes") else "none")
        if key == "text_encoder":
            return cond.get("encoder")
        return super().stored(config, key)

    def load_data(self, opts: dict) -> ImageData:
        data = load_images(opts["dataset"], image_size=opts.get("image_size"), channels=opts.get("channels"))
        c, h, w = data.shape
        check(h == w, f"{opts['dataset']}: images must be square, got {h}x{w}")
        return data

    def new_run(self, out, opts: dict, data: ImageData, model_cfg, train_cfg: dict, what: str, log,
                condition: dict | None = None):
        """Write config.json of a new run and train it."""
        c, h, _ = data.shape
        run = RunDir(out if out is not None else default_run_dir(self.name, opts["dataset"]))
        run.prepare_new(overwrite=opts.get("overwrite", False))
        config = {"family": self.name, "genlab_version": __version__, "model": model_cfg.to_dict(),
                  "data": {"dataset": opts["dataset"], "image_size": h, "channels": c, "classes": list(data.classes)},
                  "train": train_cfg}
        if condition is not None and condition["kind"] != "none":
            config["condition"] = condition
            if condition["kind"] == "text":
                what = f"text-conditioned ({condition['encoder']}) {what}"
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
        engine = Engine.for_training(opts.get("device"))
        run.write_config({**config, "train": engine.record(t, t["batch_size"])})
        if model is None:
            engine.seed(t["seed"])  # model initialisation
            model = self.build(run.path, config)
        model.to(engine.device)
        cond = make_conditioner(config.get("condition"), data, config["model"].get("num_classes", 0), log=log)
        task = self.task(model, data, config, cond)
        loop = LoopConfig(epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
                          time_budget=t["time_budget"], progress=opts.get("progress"))
        summary = fit(run, task, data.train_x, task.targets(data.train_y), loop, self.batch_transform(config), resume=resume,
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
        self._cond, self._prompt_codes = None, {}
        self.family_plugin.open_run(self, path)
        self.family = self.config.get("family")
        self.model = self.family_plugin.build(self.path, self.config)
        if self.config.get("compress", {}).get("quantize"):
            quantize_int8(self.compress_target(), skip=set(self.config["compress"].get("float_layers", {})))
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

    # -- conditions ------------------------------------------------------------------------
    @property
    def condition(self) -> dict:
        """What the model is conditioned on: {"kind": "none" | "class" | "text", ...}."""
        return self.config.get("condition") or {"kind": "class" if self.num_classes else "none"}

    @property
    def text_module(self):
        """The sampling network's TextEmbedding (for walks between prompts)."""
        raise NotImplementedError

    def _conditioner(self):
        if self._cond is None:
            self._cond = make_conditioner(self.condition, self._data(), self.num_classes)
        return self._cond

    def _no_prompt(self) -> str:
        kind = self.condition["kind"]
        has = "an unconditional model" if kind == "none" else \
            f"a class-conditional model (it takes --class: {', '.join(self.config['data'].get('classes') or [])})"
        return (f"{self.path}: {has}; --prompt needs a text-conditioned run "
                f"({self.family_plugin.command} --condition text)")

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The prompts as the model reads them: MiniLM embeddings, or word ids for the
        learned encoder. Prompts longer than the encoder reads are truncated, with a note."""
        check(self.condition["kind"] == "text", self._no_prompt())
        for p in prompts:
            check(isinstance(p, str) and p.strip(), "--prompt is empty (give some text)")
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompt_codes]
        if new:
            if self.condition.get("encoder") == "learned":
                vocab = WordVocab(self.condition["vocab"])
                for p in new:
                    if vocab.too_long(p):
                        note(f"the prompt '{p[:40]}...' is longer than the learned encoder's {MAX_WORDS} words; "
                             "it reads the first ones")
                codes = vocab.encode(new)
            else:
                for p in minilm_too_long(new):
                    note(f"the prompt '{p[:40]}...' is longer than all-MiniLM-L6-v2's {MINILM_MAX_TOKENS} tokens; "
                         "it is truncated")
                codes = minilm()(new)
            self._prompt_codes.update(zip(new, codes))
        return torch.stack([self._prompt_codes[p] for p in prompts])

    def _conditions(self, n: int, label=None, g: torch.Generator | None = None, prompt=None):
        """n conditions: a prompt's, a class's, or (neither given) drawn from the data."""
        kind = self.condition["kind"]
        if prompt is not None:
            check(label is None, "give --prompt or --class, not both")
            code = self.encode_prompts([prompt])
            return code.expand(n, *code.shape[1:])
        if kind == "text":
            check(label is None, f"{self.path}: a text-conditioned model; it takes --prompt TEXT, not --class")
            return self._conditioner().draw(n, "cpu", generator=g)[0]
        return self._labels(n, label, g)

    def _labels(self, n: int, label, g: torch.Generator) -> torch.Tensor | None:
        if self.condition["kind"] == "text":
            return self._conditions(n, label, g)
        if not self.num_classes:
            check(label is None, f"{self.path}: an unconditional model; --class needs a class-conditional model")
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

    def seed_latents(self, seeds, label=None, prompt=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z, conditions) for seeds: each seed's latent, then its class (or caption), from a
        generator seeded with it alone."""
        zs, ys = [], []
        for s in parse_seeds(seeds):
            g = torch.Generator().manual_seed(s)
            zs.append(torch.randn(1, self.latent_dim, generator=g))
            ys.append(self._conditions(1, label, g, prompt))
        return torch.cat(zs), None if ys[0] is None else torch.cat(ys)

    @torch.no_grad()
    def sample(self, n: int | None = None, seed: int | None = None, label=None, seeds=None, trunc: float | None = None,
               trunc_cutoff: int | None = None, prompt: str | None = None) -> torch.Tensor:
        """n new images (N, C, H, W) in [0, 1], decoded from z ~ N(0, I). For a
        class-conditional model, `label` (index or class name) fixes the class; by
        default classes are drawn uniformly. For a text-conditioned one, `prompt` is the
        text; by default each image gets the caption of a random training image. `seeds`
        (a list or "0-35,40"): one image per seed, its latent (and class) drawn from that
        seed alone, as stylegan2-ada does. `trunc` (style-based generators): psi, pulling w
        towards its mean."""
        style = self._style(trunc, trunc_cutoff)
        if seeds is not None:
            z, y = self.seed_latents(seeds, label, prompt)
            return torch.cat([self._decode_cpu(z[i:i + 1000], None if y is None else y[i:i + 1000], **style)
                              for i in range(0, len(z), 1000)])
        N.validate(n)
        check(n is not None, "give --n N (or --seeds)")
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        y = self._conditions(n, label, g, prompt)
        out = []
        for i in range(0, n, 1000):
            z = torch.randn(min(1000, n - i), self.latent_dim, generator=g)
            out.append(self._decode_cpu(z, None if y is None else y[i:i + 1000], **style))
        return torch.cat(out)

    @torch.no_grad()
    def sample_prompts(self, prompts, n: int = 8, seed: int | None = 0, trunc: float | None = None,
                       trunc_cutoff: int | None = None) -> torch.Tensor:
        """n images per prompt (len(prompts) * n, C, H, W), the same n latents for every
        prompt, so the rows differ by their text alone."""
        prompts = read_prompts(prompts)
        N.validate(n)
        style = self._style(trunc, trunc_cutoff)
        codes = self.encode_prompts(prompts)
        g = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        z = torch.randn(n, self.latent_dim, generator=g)
        return torch.cat([self._decode_cpu(z, code.expand(n, *code.shape), **style) for code in codes])

    def save_samples(self, n: int | None, out, seed: int | None = None, label=None, seeds=None,
                     trunc: float | None = None, trunc_cutoff: int | None = None, prompt: str | None = None,
                     prompts=None) -> Path:
        """Write samples to FILE.png (a grid), FILE.npy (an array) or DIR/ (one PNG per image:
        seedNNNN.png with --seeds, else NNNN.png). `prompts` (a list or a file, one prompt
        per line): one grid row per prompt, n images each (default 8)."""
        parsed = parse_seeds(seeds) if seeds is not None else None
        check(parsed is None or n is None, "give --n or --seeds, not both")
        check(prompts is None or (prompt is None and parsed is None),
              "--prompts-file goes with --n, not --prompt or --seeds")
        if prompt is not None or prompts is not None:
            check(self.condition["kind"] == "text", self._no_prompt())
        if prompt is not None:
            check(isinstance(prompt, str) and prompt.strip(), "--prompt is empty (give some text)")
        if prompts is not None:
            plist = read_prompts(prompts)
            n = 8 if n is None else n
            N.validate(n)
            self._style(trunc, trunc_cutoff)
            check(Path(out).suffix != "", f"{out}: --prompts-file writes one grid (FILE.png) or array (FILE.npy)")
            check_output(out, n * len(plist), self.config["model"])
            return save_images(self.sample_prompts(plist, n, seed, trunc, trunc_cutoff), out, per_row=n)
        n = 64 if parsed is None and n is None else n
        count = len(parsed) if parsed is not None else n
        N.validate(count)
        self._style(trunc, trunc_cutoff)
        kw = {"label": label, "seeds": parsed, "trunc": trunc, "trunc_cutoff": trunc_cutoff, "prompt": prompt}
        if Path(out).suffix == "":
            check_output(Path(out) / "x.png", count, self.config["model"])
            images = self.sample(n, seed, **kw)
            names = [f"seed{s:04d}.png" for s in parsed] if parsed is not None else [f"{i:04d}.png" for i in range(count)]
            for name, im in zip(names, images):
                save_grid(im[None], Path(out) / name, nrow=1, pad=0)
            return Path(out)
        check_output(out, count, self.config["model"])
        return save_images(self.sample(n, seed, **kw), out)

    def save_reconstructions(self, n: int = 32, out=None, seed: int = 0) -> Path:
        """Test images and their reconstructions in alternate rows, written to `out`
        (default RUN/reconstructions.png)."""
        out = out or self.path / "reconstructions.png"
        N.validate(n)
        check_output(out, 2 * n, self.config["model"])
        return save_images(self.reconstruct(n, seed=seed), out, per_row=8)

    def save_interpolation(self, pairs: int = 8, steps: int = 10, out=None, seed: int = 0, space: str = "z",
                           prompts=None) -> Path:
        """One latent walk per row, written to `out` (default RUN/interpolation.png);
        with `prompts` (two texts) a walk from the first text to the second per row."""
        out = out or self.path / "interpolation.png"
        PAIRS.validate(pairs)
        STEPS.validate(steps)
        check_output(out, pairs * steps, self.config["model"])
        if prompts is not None:
            images = self.prompt_walk(prompts, pairs, steps, seed=seed)
        else:
            images = self.interpolate(pairs, steps, seed=seed) if space == "z" else \
                self.interpolate(pairs, steps, seed=seed, space=space)
        return save_images(images, out, per_row=steps)

    @torch.no_grad()
    def prompt_walk(self, prompts, pairs: int = 8, steps: int = 10, seed: int = 0) -> torch.Tensor:
        """One row per latent: the condition walks in a straight line from the first
        prompt's embedding to the second's (in the model's text space), z fixed."""
        check(self.condition["kind"] == "text", self._no_prompt())
        check(isinstance(prompts, (list, tuple)) and len(prompts) == 2, "--prompts takes two texts: FROM TO")
        PAIRS.validate(pairs)
        STEPS.validate(steps)
        codes = self.encode_prompts(list(prompts)).to(self.device)
        a, b = self.text_module(codes).cpu()
        t = torch.linspace(0, 1, steps).view(steps, 1)
        cs = torch.lerp(a.expand(steps, -1), b.expand(steps, -1), t)              # (steps, dim)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(pairs, self.latent_dim, generator=g)
        return self._decode_cpu(z.repeat_interleave(steps, 0), cs.repeat(pairs, 1))

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
        y = None if yr is None else yr.repeat_interleave(steps, dim=0)
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

    @torch.no_grad()
    def evaluate_prompts(self, prompts="heldout", per_prompt: int = 100, seed: int = 0, log=None,
                         trunc: float | None = None) -> dict:
        """How well samples follow their prompts (a list, a file, or the built-in sets
        "train" / "heldout"): for MNIST / Fashion-MNIST the conditional accuracy (the
        dataset classifier predicts the class the prompt names) and, per attribute, the
        rank correlation between the asked level and the measured one; for other labelled
        data (emoji) the category accuracy of prompts that are captions and the FID per
        category. A class-conditional run is given the class each prompt names. `trunc`
        (style-based generators): psi, towards each prompt's own mean w. Appended to
        metrics.jsonl."""
        PER_PROMPT.validate(per_prompt)
        style = self._style(trunc, None)
        kind = self.condition["kind"]
        check(kind != "none", f"{self.path}: an unconditional model; eval --prompts needs a conditional run")
        data = self._data()
        dataset = self.config["data"]["dataset"]
        plist = read_prompts(prompts, data, dataset)
        check(data.train_y is not None and data.num_classes > 1,
              f"{data.name} has no labels, so there is no classifier to check prompts with")
        clf = get_classifier(data)
        g = torch.Generator().manual_seed(seed)
        images, infos = [], []
        lookup = _caption_lookup(data) if dataset not in ("mnist", "fashion-mnist") else None
        for p in plist:
            info = prompt_info(p, dataset, lookup)
            infos.append(info)
        if kind == "class":
            bad = [p for p, i in zip(plist, infos) if i["class"] is None]
            check(not bad, f"{self.path}: a class-conditional run; the prompt '{bad[0] if bad else ''}' names no class "
                           "it knows")
        z_all = torch.randn(per_prompt, self.latent_dim, generator=g)
        codes = self.encode_prompts(plist) if kind == "text" else None
        for i, info in enumerate(infos):
            c = codes[i].expand(per_prompt, *codes[i].shape) if codes is not None else \
                torch.full((per_prompt,), info["class"], dtype=torch.long)
            images.append(self._decode_cpu(z_all, c, **style))
        res = {"kind": "eval_prompts", "family": self.family, "dataset": data.name, "condition": kind,
               "prompts": len(plist), "per_prompt": per_prompt, **({"trunc": trunc} if trunc is not None else {}),
               "prompt_set": prompts if isinstance(prompts, str) else "list"}
        res.update(prompt_metrics(images, infos, clf, data, dataset))
        self.dir.append_metrics(res)
        return res

    # -- people's judgements: "Real or fake?" (the lecture's slides; HYPE's human fooling rate) ----
    def real_images(self, n: int = 1, seed: int | None = None) -> torch.Tensor:
        """n held-out (test) images of the run's dataset, (N, C, H, W) in [0, 1], as the
        model's samples come: what a person compares its samples with."""
        N.validate(n)
        data = self._data()
        x, _ = data.split("test")
        check(len(x) > 0, f"{data.name} has no held-out images to show beside the samples")
        g = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        return data.to_float(x[torch.randint(0, len(x), (n,), generator=g)])

    def record_judgement(self, shown: str, judged: str, who: str = "") -> dict:
        """Store one person's guess (`judged`, "real" or "fake") about an image that was
        `shown` ("real": a held-out image, "fake": a sample) in human_eval.jsonl beside
        the run's metrics; returns the updated tally (human_eval)."""
        for name, v in (("shown", shown), ("judged", judged)):
            check(v in ("real", "fake"), f"{name} must be 'real' or 'fake', not {v!r}")
        self.dir.append_record(HUMAN_EVAL, {"kind": "real_or_fake", "shown": shown, "judged": judged,
                                            "who": who, "time": round(time.time(), 3)}, durable=True)
        return self.human_eval()

    def human_eval(self) -> dict:
        """The tally of people's real-or-fake guesses: the human fooling rate (the share of
        samples taken for real, with its 95% Wilson interval), the share of real images
        taken for real, and how often people were right."""
        recs = [r for r in self.dir.read_records(HUMAN_EVAL) if r.get("kind") == "real_or_fake"]
        fake = [r for r in recs if r.get("shown") == "fake"]
        real = [r for r in recs if r.get("shown") == "real"]
        fooled = sum(r.get("judged") == "real" for r in fake)
        real_ok = sum(r.get("judged") == "real" for r in real)
        lo, hi = wilson(fooled, len(fake))
        return {"judgements": len(recs), "samples_shown": len(fake), "samples_taken_for_real": fooled,
                "fooling_rate": fooled / len(fake) if fake else None, "fooling_rate_ci95": [lo, hi] if fake else None,
                "real_shown": len(real), "real_taken_for_real": real_ok,
                "accuracy": (len(fake) - fooled + real_ok) / len(recs) if recs else None}

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


def _caption_lookup(data: ImageData) -> dict:
    """caption (lower case) -> class, over every captioned image of both splits."""
    out = {}
    if not data.has_captions or data.train_y is None:
        return out
    for caps, ys in ((data.captions("train"), data.train_y), (data.captions("test"), data.test_y)):
        for cs, y in zip(caps, ys.tolist()):
            for c in cs:
                out.setdefault(c.strip().lower(), y)
    return out


def build_checked(path, build, cfg_class, config: dict):
    """build(cfg_class(**config["model"])), any failure a clear config error."""
    try:
        return build(cfg_class(**config["model"]))
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise invalid_config(path, e) from None
