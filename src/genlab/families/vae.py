"""The VAE family: the lecture's variational autoencoder (--arch mlp, its settings as the
defaults) and a convolutional one (--arch conv, genlab's CPU recipe); trained with the
lecture's loss, BCE(sum) + beta * KLD, and Adam. Conditional on a class or a text
(--condition): the lecture's way (--cvae lecture: the condition joins the decoder's input
only) or the standard conditional VAE (--cvae standard: the encoder sees it too)."""
from __future__ import annotations

import torch

from ..data import ImageData
from ..metrics.elbo import iwae_nll, negative_elbo
from ..models.vae import ARCHS, VAEConfig, build_vae
from ..train.vae import VAETask
from ..util.errors import GenlabError, check
from ..util.options import Opt, at_least
from .base import register
from .images import (
    BATCH_SIZE,
    CONDITION,
    DATASET,
    EPOCHS,
    IMAGE_OPTIONS,
    LR,
    SCHEDULE,
    TEXT_ENCODER,
    ImageFamily,
    ImageRun,
    build_checked,
)

# The lecture's settings are the defaults of --arch mlp; --arch conv has its own recipe.
RECIPES = {
    "mlp": {"latent_dim": 20, "lr": 1e-3, "batch_size": 128, "schedule": "constant"},
    "conv": {"latent_dim": 32, "lr": 2e-3, "batch_size": 128, "schedule": "cosine", "hidden": 512},
}
VAE_DEFAULTS = RECIPES
CVAE = ("lecture", "standard")


class VAERun(ImageRun):
    """A trained VAE: sample, reconstruct, interpolate between test images, evaluate (with
    the test negative ELBO and the IWAE bound)."""

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    def _decode(self, z, y=None, **style):
        return self.model.decode(z, y)

    @property
    def text_module(self):
        return self.model.text

    @property
    def num_classes(self) -> int:
        return self.model.cfg.num_classes

    def _test_conditions(self, data, idx=None):
        """The conditions of the test images (each one's first caption, or its label)."""
        c = self._conditioner().test_conditions(data)
        return None if c is None else (c if idx is None else c[idx]).to(self.device)

    @torch.no_grad()
    def reconstruct(self, n: int = 32, seed: int = 0) -> torch.Tensor:
        """Test images and their reconstructions (decoded posterior means), interleaved by row."""
        check(isinstance(n, int) and n >= 1, f"--n must be a whole number >= 1, not {n}")
        data = self._data()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.test_x), generator=g)[:n]
        x = ImageData.to_float(data.test_x[idx])
        c = self._test_conditions(data, idx)
        mu, _ = self.model.encode(x.to(self.device), c)
        rec = self.model.decode(mu, c).cpu()
        per_row = 8
        rows = []
        for i in range(0, len(x), per_row):
            rows += [x[i:i + per_row], rec[i:i + per_row]]
        return torch.cat(rows)

    def _endpoints(self, pairs, g):
        data = self._data()
        idx = torch.randperm(len(data.test_x), generator=g)[:2 * pairs]
        c = self._test_conditions(data, idx)
        mu, _ = self.model.encode(ImageData.to_float(data.test_x[idx]).to(self.device), c)
        if len(mu) < 2 * pairs:
            raise GenlabError(f"--pairs {pairs} needs {2 * pairs} test images; the test split has {len(mu)}")
        # a conditional VAE walks with the first image's condition
        return mu[:pairs].cpu(), mu[pairs:2 * pairs].cpu(), None if c is None else c[:pairs].cpu()

    def _likelihood(self, data, iw_samples, n_test, seed):
        x = data.test_x if n_test is None else data.test_x[:n_test]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            c = self._test_conditions(data)
            c = None if c is None else c[:len(x)]
            ev = negative_elbo(self.model, x, ImageData.to_float, c=c)
            return {"n_test": len(x), "test_neg_elbo": ev["loss"], "test_bce": ev["bce"], "test_kld": ev["kld"],
                    f"test_iwae_nll_k{iw_samples}": iwae_nll(self.model, x, ImageData.to_float, k=iw_samples, c=c)}


@register
class VAEFamily(ImageFamily):
    name, title, plural, order = "vae", "VAE", "VAEs", 10
    help = "train a variational autoencoder"
    description = (
        "Train a VAE with the lecture's loss: BCE(sum) + beta * KLD, Adam.\n"
        "--arch mlp is the lecture's model exactly (784-400-20, ReLU, sigmoid decoder) with\n"
        "its settings as defaults (lr 1e-3, batch 128, latent 20, constant lr).\n"
        "--arch conv is a convolutional VAE (defaults: latent 32, lr 2e-3, cosine schedule).\n"
        "Prints 'Epoch N, Loss: X, Test loss: Y' per epoch (loss = summed loss / images).\n\n"
        "--condition class|text: a conditional VAE. As the lecture says, the condition's\n"
        "embedding (a one-hot label, or the caption's sentence embedding) is appended to the\n"
        "decoder's input and the encoder sees only the image (--cvae lecture, the default);\n"
        "--cvae standard lets the encoder see it too, q(z|x, c), so z need not carry what the\n"
        "text already says and samples z ~ N(0, I) follow the text (see README).")
    epilog = ("examples:\n"
              "  genlab train vae --dataset mnist --epochs 10 --out runs/vae\n"
              "  genlab train vae --arch conv --time-budget 600 --out runs/conv-vae\n"
              "  genlab train vae --out runs/vae --resume --epochs 20\n"
              "  genlab train vae --arch conv --condition text --cvae standard --out runs/text-vae\n"
              "  genlab sample runs/text-vae --prompt 'a thick seven' --out sevens.png")
    options = (
        DATASET,
        Opt("arch", str, "mlp", choices=tuple(ARCHS), what="VAE architecture", help="mlp = the lecture's model (default)"),
        EPOCHS,
        BATCH_SIZE.but(help="default 128"),
        LR.but(help="Adam learning rate (mlp 1e-3, conv 2e-3)"),
        Opt("latent_dim", int, check=at_least(1), label="latent dim", help="mlp 20, conv 32"),
        Opt("beta", float, 1.0, check=at_least(0), label="beta", help="weight of the KL term (1 = the ELBO)"),
        SCHEDULE.but(help="learning-rate schedule (mlp: constant, conv: cosine)"),
        CONDITION.but(help="none (default), class or text: a conditional VAE (see above)"),
        TEXT_ENCODER,
        Opt("cvae", str, choices=CVAE, what="conditional VAE",
            help="with --condition: lecture (default: the encoder does not see the condition) or standard "
                 "(it does: q(z|x, c))"),
    ) + IMAGE_OPTIONS
    run_class = VAERun
    loss_keys = ("train_loss", "test_loss")
    loss_labels = {"train_loss": "train loss"}
    ylabel = "loss (nats / image)"

    def fresh(self, out, o, log):
        d = RECIPES[o["arch"]]
        for k in ("lr", "batch_size", "schedule", "latent_dim"):
            o.setdefault(k, d[k])
        if o.get("epochs") is None and o.get("time_budget") is None:
            o["epochs"] = 10
        data = self.load_data(o)
        c, h, w = data.shape
        if o["arch"] == "conv":
            check(h in (28, 32), f"--arch conv needs 28x28 or 32x32 images, {o['dataset']} has {h}x{w} (use --image-size)")
        cond = self.resolve_condition(o, data, default="none")
        check(o.get("cvae") is None or cond["kind"] != "none", "--cvae goes with --condition class or text")
        mcfg = VAEConfig(arch=o["arch"], channels=c, image_size=h, latent_dim=o["latent_dim"],
                         hidden=d.get("hidden", VAEConfig.hidden), **self.condition_fields(cond, data),
                         encoder_condition=cond["kind"] != "none" and o.get("cvae") == "standard")
        train_cfg = {"epochs": o.get("epochs"), "batch_size": o["batch_size"], "lr": o["lr"],
                     "schedule": o["schedule"], "seed": o["seed"], "time_budget": o.get("time_budget"),
                     "beta": o["beta"]}
        what = f"{o['arch']} VAE" if cond["kind"] == "none" else \
            f"{'standard' if mcfg.encoder_condition else 'lecture-style'} conditional {o['arch']} VAE"
        return self.new_run(out, o, data, mcfg, train_cfg, what, log, condition=cond)

    def stored(self, config, key):
        if key == "cvae":
            return "standard" if config["model"].get("encoder_condition") else "lecture"
        return super().stored(config, key)

    def build(self, path, config):
        return build_checked(path, build_vae, VAEConfig, config)

    def task(self, model, data, config, cond):
        t = config["train"]
        return VAETask(model, data, lr=t["lr"], beta=t["beta"], schedule=t["schedule"], seed=t["seed"], cond=cond)
