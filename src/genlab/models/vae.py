"""Variational autoencoders.

`MLPVAE` is the lecture's model exactly (784-400-20, ReLU, sigmoid decoder, the
reparameterization trick), with the same layer names (fc1, fc21, fc22, fc3, fc4).
`ConvVAE` is a convolutional VAE for 28x28 or 32x32 images with 1 or 3 channels.

Both decode to *logits*; `decode` applies the sigmoid as the lecture does, and the loss
uses the numerically stable BCE-with-logits, which is the lecture's
BCE(sigmoid(logits), x, reduction='sum') written without the intermediate sigmoid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    arch: str = "mlp"          # "mlp" (the lecture's) or "conv"
    channels: int = 1
    image_size: int = 28
    latent_dim: int = 20
    hidden: int = 400          # hidden units (mlp: the lecture's 400; conv: the bottleneck MLP)
    width: int = 32            # conv: channels of the first conv layer (doubles per stage)

    @property
    def in_dim(self) -> int:
        return self.channels * self.image_size * self.image_size

    def to_dict(self) -> dict:
        return asdict(self)


class MLPVAE(nn.Module):
    """The lecture's VAE: x -> 400 -> (mu, logvar) in R^20 -> 400 -> x."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.in_dim, cfg.hidden)
        self.fc21 = nn.Linear(cfg.hidden, cfg.latent_dim)  # mu layer
        self.fc22 = nn.Linear(cfg.hidden, cfg.latent_dim)  # logvar layer
        self.fc3 = nn.Linear(cfg.latent_dim, cfg.hidden)
        self.fc4 = nn.Linear(cfg.hidden, cfg.in_dim)

    def encode(self, x):
        h1 = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc21(h1), self.fc22(h1)

    def decode_logits(self, z):
        h3 = F.relu(self.fc3(z))
        c, s = self.cfg.channels, self.cfg.image_size
        return self.fc4(h3).view(-1, c, s, s)

    def decode(self, z):
        return torch.sigmoid(self.decode_logits(z))

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z), mu, logvar


class ConvVAE(nn.Module):
    """A convolutional VAE sized for a CPU: two stride-2 convolutions down to 7x7 (8x8
    for 32x32 images), a fully connected bottleneck, and two transposed convolutions up.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if cfg.image_size not in (28, 32):
            raise ValueError("ConvVAE supports 28x28 and 32x32 images")
        self.cfg = cfg
        w, c, s = cfg.width, cfg.channels, cfg.image_size // 4
        self.enc = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1), nn.SiLU(),             # s*2 x s*2
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),         # s x s
            nn.Flatten(),
            nn.Linear(2 * w * s * s, cfg.hidden), nn.SiLU(),
        )
        self.fc_mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.fc_logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.dec = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.SiLU(),
            nn.Linear(cfg.hidden, 2 * w * s * s), nn.SiLU(),
            nn.Unflatten(1, (2 * w, s, s)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(w, c, 4, 2, 1),
        )

    def encode(self, x):
        h = self.enc(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.dec(z)

    def decode(self, z):
        return torch.sigmoid(self.decode_logits(z))

    reparameterize = MLPVAE.reparameterize

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z), mu, logvar


ARCHS = {"mlp": MLPVAE, "conv": ConvVAE}


def build_vae(cfg: VAEConfig) -> nn.Module:
    return ARCHS[cfg.arch](cfg)


def elbo_terms(logits, x, mu, logvar):
    """Per-batch sums: BCE (the lecture's reconstruction loss) and the KL to N(0, I)."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce, kld

