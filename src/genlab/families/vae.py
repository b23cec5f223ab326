"""The VAE family: the lecture's variational autoencoder (--arch mlp, its settings as the
defaults) and a convolutional one (--arch conv, genlab's CPU recipe); trained with the
lecture's loss, BCE(sum) + beta * KLD, and Adam."""
from __future__ import annotations

import torch

from ..data import ImageData
from ..metrics.elbo import iwae_nll, negative_elbo
from ..models.vae import ARCHS, VAEConfig, build_vae
from ..train.vae import VAETask
from ..util.errors import GenlabError, check
from ..util.options import Opt, at_least
from .base import register
from .images import BATCH_SIZE, DATASET, EPOCHS, IMAGE_OPTIONS, LR, SCHEDULE, ImageFamily, ImageRun, build_checked

# The lecture's settings are the defaults of --arch mlp; --arch conv has its own recipe.
RECIPES = {
    "mlp": {"latent_dim": 20, "lr": 1e-3, "batch_size": 128, "schedule": "constant"},
    "conv": {"latent_dim": 32, "lr": 2e-3, "batch_size": 128, "schedule": "cosine", "hidden": 512},
}
VAE_DEFAULTS = RECIPES


class VAERun(ImageRun):
    """A trained VAE: sample, reconstruct, interpolate between test images, evaluate (with
    the test negative ELBO and the IWAE bound)."""

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    def _decode(self, z, y=None, **style):
        return self.model.decode(z)

    @torch.no_grad()
    def reconstruct(self, n: int = 32, seed: int = 0) -> torch.Tensor:
        """Test images and their reconstructions (decoded posterior means), interleaved by row."""
        check(isinstance(n, int) and n >= 1, f"--n must be a whole number >= 1, not {n}")
        data = self._data()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.test_x), generator=g)[:n]
        x = ImageData.to_float(data.test_x[idx])
        mu, _ = self.model.encode(x.to(self.device))
        rec = self.model.decode(mu).cpu()
        per_row = 8
        rows = []
        for i in range(0, len(x), per_row):
            rows += [x[i:i + per_row], rec[i:i + per_row]]
        return torch.cat(rows)

    def _endpoints(self, pairs, g):
        data = self._data()
        idx = torch.randperm(len(data.test_x), generator=g)[:2 * pairs]
        mu, _ = self.model.encode(ImageData.to_float(data.test_x[idx]).to(self.device))
        if len(mu) < 2 * pairs:
            raise GenlabError(f"--pairs {pairs} needs {2 * pairs} test images; the test split has {len(mu)}")
        return mu[:pairs].cpu(), mu[pairs:2 * pairs].cpu(), None

    def _likelihood(self, data, iw_samples, n_test, seed):
        x = data.test_x if n_test is None else data.test_x[:n_test]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ev = negative_elbo(self.model, x, ImageData.to_float)
            return {"n_test": len(x), "test_neg_elbo": ev["loss"], "test_bce": ev["bce"], "test_kld": ev["kld"],
                    f"test_iwae_nll_k{iw_samples}": iwae_nll(self.model, x, ImageData.to_float, k=iw_samples)}


@register
class VAEFamily(ImageFamily):
    name, title, plural, order = "vae", "VAE", "VAEs", 10
    help = "train a variational autoencoder"
    description = (
        "Train a VAE with the lecture's loss: BCE(sum) + beta * KLD, Adam.\n"
        "--arch mlp is the lecture's model exactly (784-400-20, ReLU, sigmoid decoder) with\n"
        "its settings as defaults (lr 1e-3, batch 128, latent 20, constant lr).\n"
        "--arch conv is a convolutional VAE (defaults: latent 32, lr 2e-3, cosine schedule).\n"
        "Prints 'Epoch N, Loss: X, Test loss: Y' per epoch (loss = summed loss / images).")
    epilog = ("examples:\n"
              "  genlab train vae --dataset mnist --epochs 10 --out runs/vae\n"
              "  genlab train vae --arch conv --time-budget 600 --out runs/conv-vae\n"
              "  genlab train vae --out runs/vae --resume --epochs 20")
    options = (
        DATASET,
        Opt("arch", str, "mlp", choices=tuple(ARCHS), what="VAE architecture", help="mlp = the lecture's model (default)"),
        EPOCHS,
        BATCH_SIZE.but(help="default 128"),
        LR.but(help="Adam learning rate (mlp 1e-3, conv 2e-3)"),
        Opt("latent_dim", int, check=at_least(1), label="latent dim", help="mlp 20, conv 32"),
        Opt("beta", float, 1.0, check=at_least(0), label="beta", help="weight of the KL term (1 = the ELBO)"),
        SCHEDULE.but(help="learning-rate schedule (mlp: constant, conv: cosine)"),
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
        mcfg = VAEConfig(arch=o["arch"], channels=c, image_size=h, latent_dim=o["latent_dim"],
                         hidden=d.get("hidden", VAEConfig.hidden))
        train_cfg = {"epochs": o.get("epochs"), "batch_size": o["batch_size"], "lr": o["lr"],
                     "schedule": o["schedule"], "seed": o["seed"], "time_budget": o.get("time_budget"),
                     "beta": o["beta"]}
        return self.new_run(out, o, data, mcfg, train_cfg, f"{o['arch']} VAE", log)

    def build(self, path, config):
        return build_checked(path, build_vae, VAEConfig, config)

    def task(self, model, data, config):
        t = config["train"]
        return VAETask(model, data, lr=t["lr"], beta=t["beta"], schedule=t["schedule"], seed=t["seed"])
