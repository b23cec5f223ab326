"""The GAN family: the lecture's GAN exactly (--arch mlp), Radford et al.'s DCGAN, and
genlab's CPU recipe (--arch sngan, the default: spectral norm, hinge loss, EMA of G,
class-conditional when the dataset has labels)."""
from __future__ import annotations

import torch

from ..metrics.classifier import get_classifier
from ..models.gan import ARCHS, GANConfig, build_gan
from ..train.gan import LOSSES, GANTask, to_signed
from ..util.errors import check
from ..util.options import Opt, above, at_least, in_range
from .base import register
from .images import (
    BATCH_SIZE,
    CONDITION_OPTIONS,
    DATASET,
    EPOCHS,
    IMAGE_OPTIONS,
    LR,
    SCHEDULE,
    ImageFamily,
    ImageRun,
    build_checked,
)

# GANs: `mlp` is the lecture's (its unstated lr / batch / scaling: 2e-4, 100, [-1, 1]),
# `dcgan` Radford et al.'s recipe, `sngan` genlab's CPU recipe (see models/gan.py, README).
RECIPES = {
    "mlp": {"loss": "bce", "lr": 2e-4, "lr_d": None, "betas": (0.9, 0.999), "batch_size": 100,
            "schedule": "constant", "z_dim": 100, "width": 64, "ema_decay": 0.0, "hidden": 256,
            "conditional": False},
    "dcgan": {"loss": "ns", "lr": 2e-4, "lr_d": None, "betas": (0.5, 0.999), "batch_size": 64,
              "schedule": "constant", "z_dim": 100, "width": 64, "ema_decay": 0.0, "conditional": False},
    "sngan": {"loss": "hinge", "lr": 2e-4, "lr_d": 4e-4, "betas": (0.0, 0.9), "batch_size": 64,
              "schedule": "constant", "z_dim": 100, "width": 32, "ema_decay": 0.999, "conditional": None},
}
GAN_DEFAULTS = RECIPES
# Mode seeking's weight for text conditions: without it a text GAN maps every latent of a
# caption to nearly one image (README, "Text conditioning").
MODE_SEEKING = 0.3
# Conditioning augmentation's KL weight for text conditions (0: G adds the text MLP's output
# to z as it is).
COND_AUG = 0.0
# The matching-aware discriminator's share of mismatched real pairs among its negatives
# (Reed et al., 2016: half generated images, half real images with another image's caption).
MISMATCH = 0.5


class GANRun(ImageRun):
    """A trained GAN: sample (a class, for a class-conditional one), interpolate between
    random latents, evaluate. Samples come from the EMA of G when the recipe keeps one."""

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.z_dim

    @property
    def num_classes(self) -> int:
        return self.model.cfg.num_classes

    def _decode(self, z, y=None, **style):
        return self.model.generate(z, y)

    @property
    def text_module(self):
        return self.model.sampler.text

    def _endpoints(self, pairs, g):
        a = torch.randn(pairs, self.latent_dim, generator=g)
        b = torch.randn(pairs, self.latent_dim, generator=g)
        return a, b, self._labels(pairs, None, g)

    def compress_target(self):
        """The sampling generator (the discriminator is not used once trained)."""
        return self.model.sampler


def adversarial_options(conditional_help: str) -> tuple:
    """The options every adversarial family ends with (before the image options)."""
    return (Opt("conditional", bool, negate="--unconditional", help=conditional_help + " (= --condition class)",
                negate_help="ignore the labels (= --condition none)"),
            Opt("betas", tuple, cli=False),
            SCHEDULE.but(help="learning-rate schedule (default constant)"),
            Opt("mode_seeking", float, check=at_least(0), label="--mode-seeking",
                help=f"mode-seeking weight (MSGAN): two latents per condition must give different images "
                     f"(default {MODE_SEEKING} with --condition text, else 0)"),
            Opt("mismatch", float, check=in_range(0, 1), label="--mismatch",
                help=f"with --condition text: the share of D's negatives that are real images with another "
                     f"image's caption (matching-aware D, Reed et al.); the rest are generated images. "
                     f"0 = a plain projection D (default {MISMATCH})")) + CONDITION_OPTIONS


class AdversarialFamily(ImageFamily):
    """What the GAN families share: a D loss and a G loss per epoch, plotted together."""
    loss_keys = ("train_loss", "g_loss")
    loss_labels = {"train_loss": "D loss", "g_loss": "G loss"}
    ylabel = "loss"

    def adversarial_condition(self, o, data, default: str) -> dict:
        """config["condition"] from --condition, or from the older --conditional/--unconditional."""
        if o.get("conditional") is not None:
            flag = "--conditional" if o["conditional"] else "--unconditional"
            check(o.get("condition") is None, f"give --condition or {flag}, not both")
            o["condition"] = "class" if o["conditional"] else "none"
            if o["conditional"]:
                labelled = data.train_y is not None and data.num_classes > 1
                check(labelled, f"--conditional needs a labelled dataset; {o['dataset']} has no classes")
        return self.resolve_condition(o, data, default)

    @staticmethod
    def mode_seeking(o, cond) -> float:
        if o.get("mode_seeking") is None:
            return MODE_SEEKING if cond["kind"] == "text" else 0.0
        check(o["mode_seeking"] == 0 or cond["kind"] != "none", "--mode-seeking needs a condition (--condition class|text)")
        return o["mode_seeking"]

    @staticmethod
    def mismatch(o, cond) -> float:
        check(o.get("mismatch") is None or cond["kind"] == "text", "--mismatch needs --condition text")
        return MISMATCH if o.get("mismatch") is None else o["mismatch"]

    @staticmethod
    def epoch_classifier(data):
        """The dataset classifier for the per-epoch FID and class shares (labelled data only)."""
        return get_classifier(data) if data.train_y is not None and data.num_classes > 1 else None

    def stored(self, config, key):
        if key == "conditional":
            return config["model"].get("num_classes", 0) > 0
        return super().stored(config, key)


@register
class GANFamily(AdversarialFamily):
    name, title, plural, order = "gan", "GAN", "GANs", 20
    help = "train a generative adversarial network"
    description = (
        "Train a GAN: each iteration one discriminator step on a real and a fake batch,\n"
        "then one generator step with the labels flipped (the lecture's algorithm).\n"
        "Images are scaled to [-1, 1] (G ends in Tanh).\n\n"
        "--arch sngan (default) genlab's CPU recipe: DCGAN-shaped G, spectral-norm D, hinge\n"
        "    loss, EMA of G's weights (samples come from it), TTUR (lr 2e-4 G / 4e-4 D),\n"
        "    Adam betas (0, 0.9), batch 64, width 32; class-conditional (projection D)\n"
        "    when the dataset has labels (--unconditional to switch off).\n"
        "--arch dcgan Radford et al.: BatchNorm, non-saturating loss, Adam(2e-4, 0.5), batch 64.\n"
        "--arch mlp the lecture's networks exactly (G 100-256-256-784 LeakyReLU+BatchNorm,\n"
        "    Tanh; D 784-256-256-1 LeakyReLU, Sigmoid; BCE; Adam). The lecture does not state\n"
        "    lr, batch size or scaling: genlab uses 2e-4, 100 and [-1, 1].\n\n"
        "Per epoch: D loss, G loss, mean D(x) and D(G(z)), FID on 2,000 samples in the\n"
        "dataset classifier's features, a grid from fixed noise (samples/), metrics.jsonl,\n"
        "loss.png, and a warning when samples collapse onto few classes.\n\n"
        "--condition text (sngan): G(z, e(text)) -- the text through a small MLP, scaled to\n"
        "z's length and added to z -- and a projection D(x, e(text)) that is matching-aware\n"
        "(Reed et al., 2016): a real image with another image's caption counts as fake, so D\n"
        "judges whether the image fits its text (--mismatch sets their share of D's negatives).")
    epilog = ("examples:\n"
              "  genlab train gan --dataset mnist --time-budget 600 --out runs/gan\n"
              "  genlab train gan --arch mlp --epochs 10 --out runs/lecture-gan\n"
              "  genlab train gan --arch dcgan --dataset fashion-mnist --epochs 5\n"
              "  genlab sample runs/gan --n 64 --out digits.png --class 7\n"
              "  genlab train gan --condition text --dataset fashion-mnist --time-budget 600 --out runs/text-gan")
    options = (
        DATASET,
        Opt("arch", str, "sngan", choices=tuple(ARCHS), what="GAN architecture",
            help="sngan = genlab's recipe (default); mlp = the lecture's GAN"),
        EPOCHS,
        BATCH_SIZE.but(help="sngan/dcgan 64, mlp 100"),
        LR.but(help="generator's Adam learning rate (default 2e-4)"),
        Opt("lr_d", float, check=above(0), label="--lr-d",
            help="discriminator's learning rate (sngan 4e-4; others: same as --lr)"),
        Opt("loss", str, choices=LOSSES, what="GAN loss",
            help="bce (mlp: the lecture's, on D's probabilities), ns (non-saturating, on logits; dcgan), hinge (sngan)"),
        Opt("z_dim", int, check=at_least(1), label="--z-dim", help="noise dimension (default 100)"),
        Opt("width", int, check=at_least(2), label="--width", help="conv channels (sngan 32, dcgan 64)"),
        Opt("ema_decay", float, check=in_range(0, 1), label="--ema-decay",
            help="EMA of G's weights, 0 = off (sngan 0.999, others 0)"),
        Opt("cond_aug", float, check=at_least(0), label="--cond-aug",
            help=f"conditioning augmentation (StackGAN) with --condition text: G draws its text code "
                 f"around the caption's and pays this weight times its KL to N(0, I); 0 = off "
                 f"(default {COND_AUG} with --condition text)"),
    ) + adversarial_options("class-conditional (sngan; default when the dataset has labels)") + IMAGE_OPTIONS
    run_class = GANRun
    to_float = staticmethod(to_signed)

    def fresh(self, out, o, log):
        arch = o["arch"]
        d = RECIPES[arch]
        for k in ("lr", "batch_size", "schedule", "loss", "lr_d", "z_dim", "width", "ema_decay", "betas"):
            if o.get(k) is None:
                o[k] = d.get(k)
        if o.get("epochs") is None and o.get("time_budget") is None:
            o["epochs"] = 10
        check(arch != "mlp" or o["loss"] == "bce",
              "--arch mlp is the lecture's network with a Sigmoid output: it trains with --loss bce")
        check(arch == "mlp" or o["loss"] != "bce",
              f"--arch {arch} outputs logits: use --loss ns (the same loss, stable) or hinge")
        data = self.load_data(o)
        c, h, w = data.shape
        if arch in ("dcgan", "sngan"):
            check(h in (28, 32), f"--arch {arch} needs 28x28 or 32x32 images, {o['dataset']} has {h}x{w} "
                                 "(use --image-size)")
        check(arch == "sngan" or not o.get("conditional"), "--conditional needs --arch sngan")
        cond = self.adversarial_condition(o, data, default="class" if arch == "sngan" else "none")
        check(cond["kind"] == "none" or arch == "sngan", f"--condition {cond['kind']} needs --arch sngan")
        cond_aug = o.get("cond_aug")
        check(not cond_aug or cond["kind"] == "text", "--cond-aug needs --condition text")
        cond_aug = (COND_AUG if cond["kind"] == "text" else 0.0) if cond_aug is None else cond_aug
        mcfg = GANConfig(arch=arch, channels=c, image_size=h, z_dim=o["z_dim"], width=o["width"],
                         hidden=d.get("hidden", GANConfig.hidden), **self.condition_fields(cond, data),
                         cond_aug=cond_aug > 0, ema=o["ema_decay"] > 0, text_norm=cond["kind"] == "text")
        train_cfg = {"epochs": o.get("epochs"), "batch_size": o["batch_size"], "lr": o["lr"],
                     "schedule": o["schedule"], "seed": o["seed"], "time_budget": o.get("time_budget"),
                     "loss": o["loss"], "lr_d": o["lr_d"], "ema_decay": o["ema_decay"], "betas": list(o["betas"]),
                     "mode_seeking": self.mode_seeking(o, cond), "cond_aug": cond_aug,
                     "mismatch": self.mismatch(o, cond)}
        what = f"{'class-conditional ' if cond['kind'] == 'class' else ''}{arch} GAN"
        return self.new_run(out, o, data, mcfg, train_cfg, what, log, condition=cond)

    def build(self, path, config):
        return build_checked(path, build_gan, GANConfig, config)

    def task(self, model, data, config, cond):
        t = config["train"]
        clf = self.epoch_classifier(data)
        return GANTask(model, data, loss=t["loss"], lr_g=t["lr"], lr_d=t["lr_d"] or t["lr"],
                       betas=t["betas"], ema_decay=t["ema_decay"], schedule=t["schedule"],
                       classifier=clf, seed=t["seed"], cond=cond, mode_seeking=t.get("mode_seeking", 0.0),
                       cond_aug=t.get("cond_aug", 0.0), mismatch=t.get("mismatch", MISMATCH))
