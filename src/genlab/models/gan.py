"""Generative adversarial networks: a generator G(z) and a discriminator D(x).

Three architectures, all for images in [-1, 1] (G ends in Tanh):

- `mlp`: the lecture's networks exactly. G 100-256-256-784 (LeakyReLU(0.2) then
  BatchNorm1d after each hidden layer, Tanh out); D 784-256-256-1 (LeakyReLU(0.2),
  Sigmoid out, so D returns a probability). Same layer layout (`fc` Sequentials).
- `dcgan`: Radford et al. (2016) sized for 28x28 / 32x32 on a CPU: G projects z to
  (2w, s/4, s/4) and upsamples with two stride-2 transposed convolutions (BatchNorm,
  ReLU); D mirrors it with stride-2 convolutions (LeakyReLU(0.2), BatchNorm), one logit.
- `sngan`: genlab's recipe. A DCGAN-shaped G with one more 3x3 convolution at full
  resolution; D with spectral normalisation on every layer (Miyato et al., 2018) and no
  BatchNorm; optionally class-conditional (G gets a label embedding, D a projection
  term, Miyato & Koyama, 2018) or text-conditional (Reed et al., 2016: G(z, e(text)),
  the text embedding mapped by a small MLP and added to z; D(x, e(text)) with the
  projection of the embedding). With `text_norm` the MLP's output is scaled to length
  sqrt(z_dim), z's own, as a label embedding starts: unscaled it grows to outweigh z, and
  G gives less variety per caption. D returns a logit. With `cond_aug`, G's text MLP gives a
  mean and a log-variance and G reads c = mu + sigma * eps, pulled towards N(0, I) by a KL
  term (Zhang et al., 2017, StackGAN's conditioning augmentation): a caption becomes a
  neighbourhood of inputs of z's scale, not one point that outweighs z.

`GAN` bundles G, D and (for `ema`) an exponential moving average of G's weights, which
is what samples are drawn from; one state dict holds all three.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .condition import TextEmbedding


@dataclass
class GANConfig:
    arch: str = "mlp"        # "mlp" (the lecture's), "dcgan" or "sngan"
    channels: int = 1
    image_size: int = 28
    z_dim: int = 100
    hidden: int = 256        # mlp: hidden units
    width: int = 64          # dcgan / sngan: channels of the widest-resolution layer
    num_classes: int = 0     # > 0: class-conditional (sngan only)
    text_dim: int = 0        # > 0: text-conditional on an embedding of this size (sngan only)
    vocab_size: int = 0      # the learned text encoder's vocabulary (0: MiniLM embeddings)
    cond_aug: bool = False   # text: conditioning augmentation (G samples its text code, sngan only)
    text_norm: bool = False  # text: G's text shift scaled to z's length, sqrt(z_dim), like a label embedding
    ema: bool = False        # keep an exponential moving average of G (sampled from)

    @property
    def in_dim(self) -> int:
        return self.channels * self.image_size * self.image_size

    def to_dict(self) -> dict:
        return asdict(self)


# -- the lecture's networks ------------------------------------------------------------

class MLPGenerator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Sequential(
            nn.Linear(cfg.z_dim, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(cfg.hidden),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(cfg.hidden),
            nn.Linear(cfg.hidden, cfg.in_dim),
            nn.Tanh(),
        )

    def forward(self, z, y=None):
        c, s = self.cfg.channels, self.cfg.image_size
        return self.fc(z).view(-1, c, s, s)


class MLPDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, 1),
            nn.Sigmoid(),
        )

    def forward(self, x, y=None):
        x = x.reshape(x.size(0), -1)
        return self.fc(x)


# -- DCGAN ------------------------------------------------------------------------------

def _base(cfg: GANConfig) -> int:
    if cfg.image_size not in (28, 32):
        raise ValueError(f"--arch {cfg.arch} supports 28x28 and 32x32 images, not {cfg.image_size}")
    return cfg.image_size // 4


class DCGenerator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        w, s = cfg.width, _base(cfg)
        self.net = nn.Sequential(
            nn.Linear(cfg.z_dim, 2 * w * s * s, bias=False), nn.BatchNorm1d(2 * w * s * s), nn.ReLU(),
            nn.Unflatten(1, (2 * w, s, s)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, cfg.channels, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z, y=None):
        return self.net(z)


class DCDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        w, s = cfg.width, _base(cfg)
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * w * s * s, 1),
        )

    def forward(self, x, y=None):
        return self.net(x)


# -- genlab's recipe: spectral-norm D, optional class conditioning --------------------

class SNGenerator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        w, s = cfg.width, _base(cfg)
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim) if cfg.num_classes else None
        if cfg.text_dim:
            self.text = TextEmbedding(cfg.text_dim, cfg.vocab_size)
            out = 2 * cfg.z_dim if cfg.cond_aug else cfg.z_dim      # (mu, log sigma^2) or the shift itself
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, 256), nn.LeakyReLU(0.2), nn.Linear(256, out))
        self.net = nn.Sequential(
            nn.Linear(cfg.z_dim, 2 * w * s * s, bias=False), nn.BatchNorm1d(2 * w * s * s), nn.ReLU(),
            nn.Unflatten(1, (2 * w, s, s)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, w // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU(),
            nn.Conv2d(w // 2, cfg.channels, 3, 1, 1),
            nn.Tanh(),
        )

    def text_code(self, y):
        """(mu, logvar) of the text code under conditioning augmentation."""
        return self.text_proj(self.text(y)).chunk(2, dim=1)

    def cond_kl(self, y):
        """KL(N(mu, sigma^2) || N(0, I)) of the text code, mean over units and batch."""
        mu, logvar = self.text_code(y)
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()

    def forward(self, z, y=None):
        if self.embed is not None:
            z = z + self.embed(y)
        if self.cfg.text_dim and self.cfg.cond_aug:
            mu, logvar = self.text_code(y)
            # Training draws the code around its mean; sampling takes the mean itself, so an
            # image depends on its latent and its text alone (a seed gives the same image).
            z = z + (mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu)
        elif self.cfg.text_dim:
            shift = self.text_proj(self.text(y))
            if self.cfg.text_norm:
                shift = F.normalize(shift, dim=1) * math.sqrt(self.cfg.z_dim)
            z = z + shift
        return self.net(z)


class SNDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        w, s = cfg.width, _base(cfg)
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(cfg.channels, w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 2 * w, 3, 1, 1)), nn.LeakyReLU(0.2),
            nn.Flatten(),
            spectral_norm(nn.Linear(2 * w * s * s, 4 * w)), nn.LeakyReLU(0.2),
        )
        self.out = spectral_norm(nn.Linear(4 * w, 1))
        # Projection discriminator: logit += <embed(y), h>.
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, 4 * w)) if cfg.num_classes else None
        self.text_dim = cfg.text_dim
        if cfg.text_dim:   # projection of the text embedding (its own encoder, for --text-encoder learned)
            self.text = TextEmbedding(cfg.text_dim, cfg.vocab_size)
            self.text_proj = spectral_norm(nn.Linear(cfg.text_dim, 4 * w))

    def forward(self, x, y=None, *others):
        """The logit of each image with its condition y; given further conditions `others`,
        a tuple: one logit per condition, from the image features computed once (Reed et
        al.'s mismatched pairs -- real images, other captions -- cost no second pass)."""
        h = self.net(x)
        out = self.out(h)
        outs = [self._project(out, h, c) for c in (y, *others)]
        return tuple(outs) if others else outs[0]

    def _project(self, out, h, y):
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1, keepdim=True)
        if self.text_dim:
            out = out + (self.text_proj(self.text(y)) * h).sum(1, keepdim=True)
        return out


ARCHS = {"mlp": (MLPGenerator, MLPDiscriminator),
         "dcgan": (DCGenerator, DCDiscriminator),
         "sngan": (SNGenerator, SNDiscriminator)}


class GAN(nn.Module):
    """G, D and (cfg.ema) G_ema: an exponential moving average of G used for sampling."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown GAN architecture {cfg.arch}")
        if (cfg.num_classes or cfg.text_dim) and cfg.arch != "sngan":
            raise ValueError("conditioning needs --arch sngan")
        if cfg.num_classes and cfg.text_dim:
            raise ValueError("a GAN is conditioned on a class or on a text, not both")
        self.cfg = cfg
        g_cls, d_cls = ARCHS[cfg.arch]
        self.G = g_cls(cfg)
        self.D = d_cls(cfg)
        self.G_ema = None
        if cfg.ema:
            self.G_ema = copy.deepcopy(self.G)
            self.G_ema.requires_grad_(False)

    @property
    def sampler(self) -> nn.Module:
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        if self.G_ema is None:
            return
        ema_p, p = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema_p, p, 1.0 - decay)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    @torch.no_grad()
    def generate(self, z, y=None):
        """Images in [0, 1] from latents z (and labels y for a conditional GAN)."""
        return (self.sampler(z, y) + 1) / 2


def build_gan(cfg: GANConfig) -> GAN:
    return GAN(cfg)
