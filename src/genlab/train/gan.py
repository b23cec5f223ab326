"""The GAN's training step: one discriminator step on a real and a fake batch, then one
generator step, as in the lecture; the loss, optimiser settings and extras (EMA of G,
class conditioning) come from the recipe.

Losses (D's output is a probability for `bce`, a logit otherwise):
- `bce`: the lecture's. D: BCE(D(x), 1) + BCE(D(G(z)), 0); G: BCE(D(G(z)), 1) ("labels flipped").
- `ns`: the same non-saturating loss written on logits (softplus), numerically stable.
- `hinge`: D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z)) (Lim & Ye, 2017; SNGAN, BigGAN).

Conditions (train/condition.py) go to both networks: G(z, c) for c drawn from the data, D
on real images with their own conditions. For text, D is matching-aware (Reed et al.,
2016, GAN-CLS): a real image with another image's caption is a third kind of input that D
must call fake, so D -- and through it G -- learns whether an image fits its text, not
only whether it looks real; the fake term is the mean of the two negatives. With
conditioning augmentation (StackGAN) G's loss adds `cond_aug` times the KL of its sampled
text code to N(0, I).
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import ImageData
from ..metrics.images import frechet_distance, gaussian_stats
from .condition import ClassCondition, Conditioner
from .loop import Task
from .optim import lr_factor, make_optimizer, set_lr

LOSSES = ("bce", "ns", "hinge")


def to_signed(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in [-1, 1] (the lecture's Tanh range)."""
    return x_uint8.float().div_(127.5).sub_(1.0)


class GANTask(Task):
    """`model` is a models.gan.GAN; `classifier` (optional) watches for collapse."""

    def __init__(self, model, data: ImageData, loss: str = "bce", lr_g: float = 2e-4,
                 lr_d: float = 2e-4, betas=(0.9, 0.999), ema_decay: float = 0.999,
                 schedule: str = "constant", classifier=None, seed: int = 0,
                 n_grid: int = 64, n_eval: int = 2000, warn=None, cond: Conditioner | None = None,
                 mode_seeking: float = 0.0, cond_aug: float = 0.0, mismatch: float = 0.5):
        if loss not in LOSSES:
            raise ValueError(f"unknown GAN loss {loss}")
        self.model = model
        self.cfg = model.cfg
        self.data = data
        self.loss = loss
        self.lr_g, self.lr_d = lr_g, lr_d
        self.schedule = schedule
        self.ema_decay = ema_decay
        self.mode_seeking = mode_seeking
        self.mismatch = mismatch
        # conditioning augmentation's weight, for a G built with the sampled text code (a GAN
        # config's cond_aug; a StyleGAN config has none)
        self.cond_aug = cond_aug if getattr(self.cfg, "cond_aug", False) else 0.0
        self.opt_g = make_optimizer(model.G.parameters(), lr=lr_g, betas=betas)
        self.opt_d = make_optimizer(model.D.parameters(), lr=lr_d, betas=betas)
        self.G_net, self.D_net = model.G, model.D  # what the steps run (distribute() may wrap them)
        self.classifier = classifier
        self.n_eval = n_eval
        self.warn = warn or (lambda m: print(f"genlab: warning: {m}", file=sys.stderr, flush=True))
        self.steps = 0
        self._acc = torch.zeros(4, dtype=torch.float64)  # sums over images: g_loss, D(x), D(G(z)), n
        g = torch.Generator().manual_seed(seed + 1)
        self.grid_z = torch.randn(n_grid, self.cfg.z_dim, generator=g)  # fixed noise
        if cond is None:
            cond = ClassCondition(self.cfg.num_classes) if self.cfg.num_classes else Conditioner()
        self.cond = cond
        self.grid_y = cond.grid(n_grid)
        self._ref = None
        if classifier is not None:
            # Reference statistics for the per-epoch FID: 10,000 training images.
            gen = torch.Generator().manual_seed(seed + 2)
            idx = torch.randperm(len(data.train_x), generator=gen)[:10_000]
            self._ref = gaussian_stats(classifier.features(ImageData.to_float(data.train_x[idx])))
        self.bce = nn.BCELoss()

    # -- processes --------------------------------------------------------------------------
    grad_reduce = "mean"  # both losses average over the batch

    def distribute(self, engine):
        """Under torchrun both networks train in DDP: D's step runs D's wrapper, G's step
        G's (D then runs unwrapped, its weights frozen: its gradients are not needed)."""
        self.engine = engine
        self.G_net = engine.wrap(self.model.G, self.grad_reduce)
        self.D_net = engine.wrap(self.model.D, self.grad_reduce)

    def _latents(self, b, dev):
        """Latents for this rank's b images: its rows of the global batch's."""
        return self.engine.randn(b, self.cfg.z_dim, device=dev)

    def _draw(self, b, dev):
        """Conditions for this rank's b generated images: its rows of the global batch's."""
        return self.engine.per_example(lambda k: self.cond.draw(k, dev), b)

    # -- state (resume) -------------------------------------------------------------------
    def state_dict(self):
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "steps": self.steps, "acc": self._acc.clone()}

    def load_state_dict(self, state):
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.steps = int(state["steps"])
        self._acc = state["acc"].clone()

    def set_progress(self, fraction):
        if self.schedule != "constant":
            f = lr_factor(self.schedule, fraction, warmup=0.0)
            for opt, lr in ((self.opt_g, self.lr_g), (self.opt_d, self.lr_d)):
                set_lr(opt, lr * f)

    # -- one iteration ----------------------------------------------------------------------
    def targets(self, train_y):
        return self.cond.targets(self.data)

    def _fake_term(self, out, weight=None):
        """D's loss for inputs it must call fake (weighted: the mismatched pairs)."""
        if self.loss == "bce":
            per = -torch.log1p(-out.clamp(max=1 - 1e-7))
        elif self.loss == "ns":
            per = F.softplus(out)
        else:
            per = F.relu(1 + out)
        if weight is None:
            return per.mean()
        return (per.flatten() * weight).sum() / weight.sum().clamp(min=1.0)

    def _mismatched(self, c_real, key):
        """(other images' captions for the real images, weight 1 where the caption really
        differs), or (None, None) when D sees no mismatched pairs (no text, --mismatch 0)."""
        if self.cond.kind != "text" or self.mismatch == 0:
            return None, None
        return self.cond.mismatch(c_real, key)

    def _negatives(self, out_fake, out_mis=None, w=None):
        """D's fake term: the generated batch's, and for text a share `mismatch` of it taken
        by the mismatched real pairs instead (Reed et al.: half; `out_mis`: D's logits for
        the real images with the captions `_mismatched` gave, weighed by its `w`)."""
        if out_mis is None:
            return self._fake_term(out_fake)
        m = self.mismatch
        return (1 - m) * self._fake_term(out_fake) + m * self._fake_term(out_mis, w)

    def train_step(self, x, y):
        G, D = self.model.G, self.model.D
        b, dev = x.shape[0], x.device
        y_real, key = self.cond.real(y)
        y_fake, _ = self._draw(b, dev)

        # Discriminator: real images -> "real", generated images -> "fake".
        z = self._latents(b, dev)
        with torch.no_grad():
            fake = G(z, y_fake)
        c_mis, w = self._mismatched(y_real, key)
        if c_mis is None:
            out_real, out_mis = self.D_net(x, y_real), None
        else:   # the real images' features serve their own captions and the mismatched ones
            out_real, out_mis = self.D_net(x, y_real, c_mis)
        out_fake = self.D_net(fake, y_fake)
        if self.cond.kind == "text":
            real = (F.softplus(-out_real) if self.loss == "ns" else F.relu(1 - out_real)).mean()
            d_loss = real + self._negatives(out_fake, out_mis, w)
        elif self.loss == "bce":
            ones, zeros = torch.ones(b, 1, device=dev), torch.zeros(b, 1, device=dev)
            d_loss = self.bce(out_real, ones) + self.bce(out_fake, zeros)
        elif self.loss == "ns":
            d_loss = F.softplus(-out_real).mean() + F.softplus(out_fake).mean()
        else:
            d_loss = F.relu(1 - out_real).mean() + F.relu(1 + out_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        # Generator: make D call fresh fakes "real" (the labels flipped).
        z = self._latents(b, dev)
        y_fake = self._g_conditions(b, dev, y_fake)
        D.requires_grad_(False)
        img = self.G_net(z, y_fake)
        out = D(img, y_fake)
        if self.loss == "bce":
            g_loss = self.bce(out, torch.ones(b, 1, device=dev))
        elif self.loss == "ns":
            g_loss = F.softplus(-out).mean()
        else:
            g_loss = -out.mean()
        g_loss = g_loss + self._mode_seeking_term(img, z)
        if self.cond_aug > 0:   # conditioning augmentation: the text code's KL to N(0, I)
            g_loss = g_loss + self.cond_aug * G.cond_kl(y_fake)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        D.requires_grad_(True)

        with torch.no_grad():
            p_real, p_fake = (out_real, out_fake) if self.loss == "bce" else \
                (torch.sigmoid(out_real), torch.sigmoid(out_fake))
        return self._end_step(d_loss, g_loss, p_real, p_fake, b)

    def _g_conditions(self, b, dev, y_fake):
        """Fresh conditions for the generator step; with mode seeking the second half of
        the batch repeats the first half's, so each condition is drawn with two latents."""
        if y_fake is None:
            return None
        y, _ = self._draw(b, dev)
        if self.mode_seeking > 0 and b >= 2:
            h = b // 2
            y = torch.cat([y[:h], y[:h], y[2 * h:]])
        return y

    def _mode_seeking_term(self, img, z):
        """Mode seeking (Mao et al., 2019, MSGAN): for two latents with the same condition,
        the images' distance over the latents' -- its inverse, weighted, joins G's loss, so G
        cannot map every latent of a condition to one image (the per-prompt collapse a text
        condition invites: the caption alone nearly determines a digit)."""
        if self.mode_seeking <= 0 or self.cond.kind == "none" or img.shape[0] < 2:
            return 0.0
        h = img.shape[0] // 2
        ratio = (img[:h] - img[h:2 * h]).abs().mean() / (z[:h] - z[h:2 * h]).abs().mean()
        return self.mode_seeking / (ratio + 1e-5)

    def _end_step(self, d_loss, g_loss, p_real, p_fake, b):
        """After both updates: count the step, move the EMA generator, add to the epoch's
        averages (G loss, D(x), D(G(z))); the summed D loss for the loop, NaN if G diverged."""
        self.steps += 1
        if self.model.G_ema is not None:
            # EMA warm-up: average over the steps so far until there are enough of them.
            self.model.update_ema(min(self.ema_decay, (1 + self.steps) / (10 + self.steps)))
        g = float(g_loss.detach())
        with torch.no_grad():
            self._acc += torch.tensor([g * b, float(p_real.sum()), float(p_fake.sum()), b],
                                      dtype=torch.float64)
        if not math.isfinite(g):
            return torch.tensor(float("nan"))
        return d_loss.detach() * b

    # -- per epoch --------------------------------------------------------------------------
    def _device(self):
        return next(self.model.parameters()).device

    def grid(self):
        dev = self._device()
        return self.model.generate(self.grid_z.to(dev), None if self.grid_y is None else self.grid_y.to(dev))

    def end_epoch(self, epoch, train_loss, final):
        gl, dx, dgz, n = (self._acc / max(1.0, float(self._acc[3]))).tolist()
        self._acc.zero_()
        rec = {"d_loss": train_loss, "g_loss": gl, "d_real": dx, "d_fake": dgz, "iterations": self.steps}
        if self.classifier is not None:
            g = torch.Generator().manual_seed(epoch)
            z = torch.randn(self.n_eval, self.cfg.z_dim, generator=g)
            dev = self._device()
            y = self.cond.draw(self.n_eval, "cpu", generator=g)[0]
            y = None if y is None else y.cpu()
            imgs = torch.cat([self.model.generate(z[i:i + 500].to(dev), None if y is None else y[i:i + 500].to(dev)).cpu()
                              for i in range(0, self.n_eval, 500)])
            feats = self.classifier.features(imgs)
            mu, sigma = gaussian_stats(feats)
            rec[f"fid_{self.n_eval}"] = frechet_distance(mu, sigma, *self._ref)
            share = self.classifier.class_share(imgs)
            rec["class_share"] = [round(s, 4) for s in share]
            k = len(share)
            low = [self.data.classes[i] if i < len(self.data.classes) else str(i)
                   for i, s in enumerate(share) if s < 0.3 / k]
            if low or max(share) > 3.0 / k:
                top = max(range(k), key=lambda i: share[i])
                self.warn(f"epoch {epoch}: samples collapse onto few classes "
                          f"('{self.data.classes[top]}' {share[top]:.0%} of samples"
                          + (f"; almost none of: {', '.join(low)}" if low else "") + ")")
        return rec

    def epoch_line(self, epoch, rec):
        line = (f"Epoch {epoch}, D loss: {rec['train_loss']:.4f}, G loss: {rec['g_loss']:.4f}, "
                f"D(x): {rec['d_real']:.3f}, D(G(z)): {rec['d_fake']:.3f}")
        fid = next((k for k in rec if k.startswith("fid_")), None)
        if fid:
            line += f", FID[{self.classifier.label}] ({self.n_eval} samples): {rec[fid]:.2f}"
        return line
