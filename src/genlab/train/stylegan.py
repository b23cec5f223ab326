"""The style-based generator's training step (StyleGAN2's recipe, on a CPU):

- the non-saturating logistic loss: D: softplus(D(G(z))) + softplus(-D(x)); G: softplus(-D(G(z)));
- lazy R1: every `r1_interval` steps, gamma/2 * |grad_x D(x)|^2 on real images, scaled by
  the interval (Mescheder et al., 2018);
- style mixing regularisation: with probability `mixing`, a second latent's styles from a
  random layer on (so neighbouring styles cannot rely on each other);
- the EMA of G (samples come from it) and w_avg, the running mean of w that truncation uses;
- optional path-length regularisation (`pl_weight`, every 4 steps): |J_w^T y| held near its
  running mean, which smooths the mapping from W to images;
- DiffAugment (Zhao et al., 2020: translation, cutout, colour) on every image D sees, real
  or fake, so a small dataset (emoji) does not let D memorise it.

Per-epoch FID, grids and the collapse warning come from the GAN trainer it extends.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .gan import GANTask


def diffaugment(x: torch.Tensor) -> torch.Tensor:
    """Random colour, translation (1/8 of the size) and cutout (half the size), the same
    kinds for real and fake images, differentiable in x."""
    b, c, h, w = x.shape
    dev = x.device
    x = x + (torch.rand(b, 1, 1, 1, device=dev) - 0.5)                                   # brightness
    if c == 3:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1, device=dev) * 2) + mean                 # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - mean) * (torch.rand(b, 1, 1, 1, device=dev) + 0.5) + mean                   # contrast
    s = max(1, h // 8)
    tx = torch.randint(-s, s + 1, (b, 1, 1), device=dev)
    ty = torch.randint(-s, s + 1, (b, 1, 1), device=dev)
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    yy = (gy[None] + ty).clamp(-1, h)                                                    # -1 / h: padding
    xx = (gx[None] + tx).clamp(-1, w)
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    idx = ((yy + 1) * (w + 2) + (xx + 1)).view(b, 1, -1).expand(-1, c, -1)
    x = pad.flatten(2).gather(2, idx).view(b, c, h, w)                                   # translation
    ch, cw = h // 2, w // 2
    oy = torch.randint(0, h - ch + 1, (b, 1, 1), device=dev)
    ox = torch.randint(0, w - cw + 1, (b, 1, 1), device=dev)
    keep = ~(((gy[None] - oy) >= 0) & ((gy[None] - oy) < ch) & ((gx[None] - ox) >= 0) & ((gx[None] - ox) < cw))
    return x * keep.unsqueeze(1).to(x.dtype)                                             # cutout


class StyleGANTask(GANTask):
    def __init__(self, model, data, *, r1_gamma: float = 1.0, r1_interval: int = 16, mixing: float = 0.9,
                 pl_weight: float = 0.0, augment: bool = False, to_model=None, **kw):
        super().__init__(model, data, loss="ns", **kw)
        self.r1_gamma, self.r1_interval, self.mixing = r1_gamma, r1_interval, mixing
        self.pl_weight, self.augment = pl_weight, augment
        self.pl_mean = torch.zeros(())
        self.map_net, self.syn_net = model.G.mapping, model.G.synthesis  # (distribute() may wrap them)

    def state_dict(self):
        return {**super().state_dict(), "pl_mean": self.pl_mean.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.pl_mean = state.get("pl_mean", torch.zeros(())).clone()

    def distribute(self, engine):
        """Under torchrun: the mapping and synthesis networks (called one by one here) and
        D each in DDP."""
        self.engine = engine
        self.map_net = engine.wrap(self.model.G.mapping, self.grad_reduce)
        self.syn_net = engine.wrap(self.model.G.synthesis, self.grad_reduce)
        self.D_net = engine.wrap(self.model.D, self.grad_reduce)

    def _aug(self, x):
        return diffaugment(x) if self.augment else x

    def _ws(self, b, y, dev, update_w_avg=False, z=None):
        """Styles for b images: one latent's, or (style mixing) two latents' split at a random layer."""
        z = self._latents(b, dev) if z is None else z
        ws = self.map_net(z, y, update_w_avg=update_w_avg)
        if self.mixing > 0 and float(torch.rand(())) < self.mixing:
            cut = int(torch.randint(1, self.cfg.num_ws, ()))
            ws2 = self.map_net(self._latents(b, dev), y)
            ws = torch.cat([ws[:, :cut], ws2[:, cut:]], dim=1)
        return ws

    def train_step(self, x, y):
        G, D = self.model.G, self.model.D
        b, dev = x.shape[0], x.device
        y_real, key = self.cond.real(y)
        y_fake, _ = self._draw(b, dev)

        # Discriminator: logistic loss, and every r1_interval steps the R1 penalty on real images.
        with torch.no_grad():
            fake = G.synthesis(self._ws(b, y_fake, dev))
        out_real = self.D_net(self._aug(x), y_real)
        out_fake = self.D_net(self._aug(fake), y_fake)
        c_mis, w = self._mismatched(y_real, key)   # (a fresh augmentation of the real images for those pairs)
        out_mis = None if c_mis is None else D(self._aug(x), c_mis)
        d_loss = self._negatives(out_fake, out_mis, w) + F.softplus(-out_real).mean()
        if self.r1_gamma > 0 and self.steps % self.r1_interval == 0:
            xr = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(D(self._aug(xr), y_real).sum(), xr, create_graph=True)
            d_loss = d_loss + self.r1_gamma / 2 * grad.square().sum(dim=[1, 2, 3]).mean() * self.r1_interval
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        # Generator: make D call fresh fakes real; now and then the path-length penalty.
        D.requires_grad_(False)
        y_fake = self._g_conditions(b, dev, y_fake)
        z = self._latents(b, dev)
        ws = self._ws(b, y_fake, dev, update_w_avg=True, z=z)
        img = self.syn_net(ws)
        out = D(self._aug(img), y_fake)
        g_loss = F.softplus(-out).mean() + self._mode_seeking_term(img, z)
        if self.pl_weight > 0 and self.steps % 4 == 0:
            g_loss = g_loss + self._path_length(b, y_fake, dev) * 4
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        D.requires_grad_(True)

        with torch.no_grad():
            return self._end_step(d_loss, g_loss, torch.sigmoid(out_real), torch.sigmoid(out_fake), b)

    def _path_length(self, b, y, dev):
        """Path-length regularisation (Karras et al., 2020): the Jacobian-vector norm
        |J_w^T y| for random image-space y, pulled towards its running mean."""
        bs = max(1, b // 2)
        ws = self._ws(bs, None if y is None else y[:bs], dev)
        img = self.syn_net(ws)
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        grad, = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), 0.01)
        return self.pl_weight * (lengths - self.pl_mean).square().mean()
