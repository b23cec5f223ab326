"""The style-based generator family (`genlab train stylegan`): the lecture's StyleGAN
(--arch stylegan, AdaIN) and StyleGAN2 (--arch stylegan2, weight demodulation), trained
on a CPU, with the paper's controls -- truncation, style mixing, noise -- and metrics
(perceptual path length, linear separability).

    run = genlab.train("stylegan", dataset="mnist", time_budget=600, out="runs/sg")
    run.sample(seeds=range(36), trunc=0.7)
    run.style_mix(rows=[85, 100, 75], cols=[55, 821, 1789], styles="coarse")
    G = run.model.sampler
    ws = G.mapping(z, c, truncation_psi=0.7); img = G.synthesis(ws, noise_mode="const")
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ImageData
from ..metrics.classifier import get_classifier
from ..metrics.disentangle import linear_separability, perceptual_path_length
from ..models.stylegan import ARCHS, StyleGANConfig, build_stylegan, style_groups
from ..train.gan import to_signed
from ..train.stylegan import StyleGANTask
from ..util.errors import GenlabError, check
from ..util.options import Opt, above, at_least, in_range
from .base import register
from .gan import MISMATCH, AdversarialFamily, GANRun, adversarial_options
from .images import (
    BATCH_SIZE,
    DATASET,
    EPOCHS,
    IMAGE_OPTIONS,
    LR,
    TRUNC,
    build_checked,
    check_output,
    parse_seeds,
    save_images,
)

# genlab's CPU recipe (benchmarks/stylegan.py): StyleGAN2's losses and regularisers at a
# width a 2-core CPU trains in minutes.
RECIPE = {"arch": "stylegan2", "batch_size": 32, "lr": 2e-3, "betas": (0.0, 0.99), "z_dim": 128, "w_dim": 128,
          "mapping_layers": 8, "mapping_lr_mul": 0.1, "width": 64, "min_width": 16, "mixing": 0.9, "r1_gamma": 0.5,
          "pl_weight": 0.0, "ema_decay": 0.999, "schedule": "constant"}
SMALL_DATASET = 10_000  # fewer training images than this: DiffAugment on by default
METRICS = ("fid", "kid", "pr", "ppl_zfull", "ppl_wfull", "ppl_zend", "ppl_wend", "ls")


def parse_psis(spec) -> list[float]:
    """Truncation values from "-1,-0.5,0,0.7,1" or a list."""
    parts = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    out = []
    for p in parts:
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise GenlabError(f"--psi {spec}: '{p}' is not a number") from None
        out.append(TRUNC.validate(v))
    check(out, "--psi: no values given")
    return out


def parse_styles(spec, num_ws: int, groups: dict) -> list[int]:
    """--styles coarse|middle|fine (or a mix: coarse,fine) or layer indices (0-3, 1,4)."""
    if isinstance(spec, (list, tuple)):
        idx = [int(i) for i in spec]
    else:
        idx = []
        for part in str(spec).split(","):
            part = part.strip()
            if part in groups:
                idx += groups[part]
            elif "-" in part.lstrip("-") and part.replace("-", "").isdigit():
                a, b = part.split("-")
                idx += list(range(int(a), int(b) + 1))
            elif part.isdigit():
                idx.append(int(part))
            else:
                raise GenlabError(f"--styles {spec}: '{part}' is not coarse, middle, fine or a layer index")
    bad = [i for i in idx if not 0 <= i < num_ws]
    check(idx and not bad, f"--styles {spec}: this generator has style layers 0-{num_ws - 1} "
                           f"(coarse {groups['coarse']}, middle {groups['middle']}, fine {groups['fine']})")
    return sorted(set(idx))


class StyleGANRun(GANRun):
    """A trained style-based generator: everything a GAN run does, plus truncation, style
    mixing, noise and interpolation in W."""

    truncatable = True
    metric_names = METRICS

    @property
    def text_module(self):
        return self.model.sampler.mapping.text

    def _decode(self, z, y=None, trunc=None, trunc_cutoff=None, **kw):
        return self.model.generate(z, y, truncation_psi=1.0 if trunc is None else trunc,
                                   truncation_cutoff=trunc_cutoff)

    def _ws(self, seeds, label=None, trunc=1.0, trunc_cutoff=None) -> torch.Tensor:
        """The styles (len(seeds), num_ws, w_dim) of the latents the seeds draw."""
        z, y = self.seed_latents(seeds, label)
        with torch.no_grad():
            return self.model.sampler.mapping(z.to(self.device), None if y is None else y.to(self.device),
                                              truncation_psi=trunc, truncation_cutoff=trunc_cutoff)

    def _synth(self, ws, noise_mode="const") -> torch.Tensor:
        return self.model.generate_ws(ws, noise_mode).cpu()

    @torch.no_grad()
    def style_mix(self, rows, cols, styles="coarse", trunc: float = 1.0, label=None) -> torch.Tensor:
        """The paper's Figure 3 as a grid (len(rows) + 1) x (len(cols) + 1): the top row the
        column images, the left column the row images, and in each cell the row image with
        the column's `styles` copied in (coarse, middle, fine, or layer indices)."""
        idx = parse_styles(styles, self.model.cfg.num_ws, style_groups(self.model.cfg))
        TRUNC.validate(trunc)
        rows, cols = parse_seeds(rows), parse_seeds(cols)
        w_rows, w_cols = self._ws(rows, label, trunc), self._ws(cols, label, trunc)
        row_images = self._synth(w_rows)
        grid = [torch.ones_like(row_images[:1]), self._synth(w_cols)]
        for r in range(len(rows)):
            mixed = w_rows[r:r + 1].repeat(len(cols), 1, 1)
            mixed[:, idx] = w_cols[:, idx]
            grid += [row_images[r:r + 1], self._synth(mixed)]
        return torch.cat(grid)

    @torch.no_grad()
    def noise_figure(self, seed: int = 0, draws: int = 8, label=None) -> torch.Tensor:
        """The paper's Figure 4 as one row: the image with the fixed noise, `draws` images
        with fresh noise (same w), and the per-pixel standard deviation over 100 draws."""
        ws = self._ws([seed], label)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            many = self._synth(ws.repeat(100, 1, 1), noise_mode="random")
        std = many.std(0, keepdim=True)
        std = std / std.max().clamp(min=1e-8)
        return torch.cat([self._synth(ws), many[:draws], std])

    @torch.no_grad()
    def truncation_figure(self, seeds, psis, label=None) -> torch.Tensor:
        """The paper's Figure 8: one row per seed, one column per psi."""
        return torch.cat([self._synth(self._ws([s], label, trunc=p)) for s in seeds for p in psis])

    @torch.no_grad()
    def interpolate(self, pairs: int = 8, steps: int = 10, seed: int = 0, space: str = "z") -> torch.Tensor:
        """As for every image run; `space="w"` walks linearly between the two latents' w."""
        if space == "z":
            return super().interpolate(pairs, steps, seed)
        check(space == "w", f"--space must be z or w, not {space}")
        g = torch.Generator().manual_seed(seed)
        a, b, yr = self._endpoints(pairs, g)
        with torch.no_grad():
            m = self.model.sampler.mapping
            wa = m(a.to(self.device), None if yr is None else yr.to(self.device))
            wb = m(b.to(self.device), None if yr is None else yr.to(self.device))
        t = torch.linspace(0, 1, steps, device=self.device).view(1, steps, 1, 1)
        ws = torch.lerp(wa.unsqueeze(1), wb.unsqueeze(1), t)
        return self._synth(ws.reshape(pairs * steps, *wa.shape[1:]))

    # -- the figures, written ---------------------------------------------------------------------
    def save_style_mix(self, rows, cols, styles="coarse", out="style-mix.png", trunc: float = 1.0, label=None):
        rows, cols = parse_seeds(rows), parse_seeds(cols)
        check_output(out, (len(rows) + 1) * (len(cols) + 1), self.config["model"])
        return save_images(self.style_mix(rows, cols, styles, trunc=trunc, label=label), out, per_row=len(cols) + 1)

    def save_noise(self, seed: int = 0, out="noise.png", draws: int = 8, label=None):
        check(isinstance(draws, int) and draws >= 1, f"--draws must be a whole number >= 1, not {draws}")
        check_output(out, draws + 102, self.config["model"])
        return save_images(self.noise_figure(seed, draws, label=label), out, per_row=draws + 2)

    def save_truncation(self, seeds="0-5", psis=(-1, -0.5, 0, 0.5, 0.7, 1), out="truncation.png", label=None):
        seeds, psis = parse_seeds(seeds), parse_psis(psis)
        check_output(out, len(seeds) * len(psis), self.config["model"])
        return save_images(self.truncation_figure(seeds, psis, label=label), out, per_row=len(psis))

    # -- the paper's metrics ------------------------------------------------------------------
    def extra_metrics(self, names, data: ImageData, seed: int, n: int) -> dict:
        clf = get_classifier(data)
        tag = clf.label
        out = {}
        G = self.model.sampler
        dev = self.device

        def sampler(k, g):
            z = torch.randn(k, self.latent_dim, generator=g)
            y = self._labels(k, None, g)
            return z.to(dev), None if y is None else y.to(dev)

        for name in names:
            if name.startswith("ppl_"):
                space, end = name[4], name.endswith("end")
                out[f"{name}[{tag}]"] = perceptual_path_length(
                    G, self.model.to_image, clf, sampler, space=space, end=end, n=min(n, 5000), seed=seed)
            elif name == "ls":
                ls = linear_separability(G, self.model.to_image, clf, sampler, n=n, seed=seed)
                out[f"ls_z[{tag}]"], out[f"ls_w[{tag}]"] = ls["z"], ls["w"]
        return out


@register
class StyleGANFamily(AdversarialFamily):
    name, title, plural, order = "stylegan", "style-based GAN", "style-based GANs", 25
    help = "train a style-based generator (StyleGAN / StyleGAN2)"
    description = (
        "Train a style-based generator (Karras et al.): a mapping network z -> w (8 layers; its\n"
        "learning rate x 0.1 -- the paper's x 0.01 leaves it nearly frozen in a CPU budget),\n"
        "a learned 4x4 constant, a style per convolution, noise inputs with learned strengths;\n"
        "a spectral-norm discriminator with minibatch standard deviation.\n"
        "--arch stylegan2 (default) weight modulation / demodulation; --arch stylegan the\n"
        "    lecture's paper (AdaIN).\n"
        "Training: non-saturating logistic loss, lazy R1 (every 16 steps, --r1-gamma), style-mixing\n"
        "regularisation (--mixing 0.9), EMA of G, w_avg for truncation, optional path-length\n"
        "regularisation (--pl-weight), DiffAugment (on by default below 10,000 training images),\n"
        "class-conditional (an embedding into the mapping network) when the data has labels;\n"
        "--condition text: the caption's embedding enters the mapping network instead (and D's\n"
        "projection, matching-aware as in the GAN).\n"
        "28x28 data (MNIST) is padded to 32x32 with background and the samples cropped back to 28.\n"
        "Controls: genlab sample --seeds 0-35 --trunc 0.7, style-mix, noise, truncation,\n"
        "interpolate --space w; metrics: genlab eval --metrics fid,kid,pr,ppl_wend,ls ...")
    epilog = ("examples:\n"
              "  genlab train stylegan --dataset mnist --time-budget 600 --out runs/sg\n"
              "  genlab train stylegan --dataset emoji --time-budget 1800 --out runs/sg-emoji\n"
              "  genlab style-mix runs/sg --rows 85,100,75 --cols 55,821,1789 --styles coarse --out mix.png")
    options = (
        DATASET,
        Opt("arch", str, RECIPE["arch"], choices=ARCHS, what="style-based architecture",
            help="stylegan2 (default: demodulation) or stylegan (the paper's AdaIN)"),
        EPOCHS,
        BATCH_SIZE.but(help="default 32"),
        LR.but(help="Adam learning rate of G and D (default 2e-3)"),
        Opt("z_dim", int, check=at_least(1), label="--z-dim", help="latent dimension (default 128)"),
        Opt("w_dim", int, check=at_least(1), label="--w-dim", help="intermediate latent (W) dimension (default 128)"),
        Opt("mapping_layers", int, check=at_least(1), label="--mapping-layers", help="mapping network depth (default 8)"),
        Opt("mapping_lr_mul", float, check=above(0), label="--mapping-lr-mul",
            help="the mapping network's learning-rate multiplier (default 0.1; the paper: 0.01)"),
        Opt("width", int, check=at_least(8), label="--width", help="feature maps at 4x4, halved per doubling down to 16 (default 64)"),  # noqa: E501
        Opt("mixing", float, check=in_range(0, 1, closed=True), label="--mixing",
            help="style-mixing probability (default 0.9)"),
        Opt("r1_gamma", float, check=at_least(0), label="--r1-gamma", help="R1 weight (default 0.5)"),
        Opt("pl_weight", float, check=at_least(0), label="--pl-weight", help="path-length regularisation (default 0: off)"),
        Opt("ema_decay", float, check=in_range(0, 1), label="--ema-decay", help="EMA of G (default 0.999)"),
        Opt("augment", bool, negate="--no-augment", help="DiffAugment (default: on below 10,000 training images)",
            negate_help="no augmentation"),
    ) + adversarial_options("class-conditional (default when the dataset has labels)") + IMAGE_OPTIONS
    run_class = StyleGANRun

    def fresh(self, out, o, log):
        for k, v in RECIPE.items():
            if o.get(k) is None:
                o[k] = v
        if o.get("epochs") is None and o.get("time_budget") is None:
            o["epochs"] = 10
        data = self.load_data(o)
        c, h, _ = data.shape
        size = 32 if h == 28 else h
        check(size >= 8 and size & (size - 1) == 0,
              f"{o['dataset']}: {h}x{h} images; a style-based generator needs a power-of-two size (8, 16, 32, 64) "
              "-- use --image-size")
        cond = self.adversarial_condition(o, data, default="class")
        augment = len(data.train_x) < SMALL_DATASET if o.get("augment") is None else o["augment"]
        mcfg = StyleGANConfig(arch=o["arch"], channels=c, image_size=size, out_size=h if h != size else None,
                              z_dim=o["z_dim"], w_dim=o["w_dim"], mapping_layers=o["mapping_layers"], width=o["width"],
                              lr_mul=o["mapping_lr_mul"],
                              min_width=RECIPE["min_width"], **self.condition_fields(cond, data),
                              ema=o["ema_decay"] > 0)
        train_cfg = {"epochs": o.get("epochs"), "batch_size": o["batch_size"], "lr": o["lr"], "schedule": o["schedule"],
                     "seed": o["seed"], "time_budget": o.get("time_budget"), "betas": list(o["betas"]),
                     "mixing": o["mixing"], "r1_gamma": o["r1_gamma"], "pl_weight": o["pl_weight"],
                     "ema_decay": o["ema_decay"], "augment": augment, "mode_seeking": self.mode_seeking(o, cond),
                     "mismatch": self.mismatch(o, cond)}
        what = f"{'class-conditional ' if cond['kind'] == 'class' else ''}{o['arch']} ({size}x{size}" + \
            (f", {h}x{h} data padded" if h != size else "") + (", DiffAugment" if augment else "") + ")"
        return self.new_run(out, o, data, mcfg, train_cfg, what, log, condition=cond)

    def build(self, path, config):
        return build_checked(path, build_stylegan, StyleGANConfig, config)

    def task(self, model, data, config, cond):
        t = config["train"]
        clf = self.epoch_classifier(data)
        return StyleGANTask(model, data, lr_g=t["lr"], lr_d=t["lr"], betas=t["betas"], ema_decay=t["ema_decay"],
                            schedule=t["schedule"], classifier=clf, seed=t["seed"], r1_gamma=t["r1_gamma"],
                            mixing=t["mixing"], pl_weight=t["pl_weight"], augment=t["augment"], cond=cond,
                            mode_seeking=t.get("mode_seeking", 0.0), mismatch=t.get("mismatch", MISMATCH))

    def batch_transform(self, config):
        """uint8 images -> [-1, 1] at the synthesis resolution (28x28 padded to 32 with background)."""
        size, out = config["model"]["image_size"], config["model"].get("out_size")
        if not out:
            return to_signed
        m = (size - out) // 2
        return lambda x: F.pad(to_signed(x), (m, size - out - m, m, size - out - m), value=-1.0)

