"""Variational autoencoders.

`MLPVAE` is the lecture's model exactly (784-400-20, ReLU, sigmoid decoder, the
reparameterization trick), with the same layer names (fc1, fc21, fc22, fc3, fc4).
`ConvVAE` is a convolutional VAE for 28x28 or 32x32 images with 1 or 3 channels.

Both can be conditional (a class label or a text, `num_classes` / `text_dim`). As the
lecture says, the condition's embedding is appended to the decoder's input and the
encoder does not see it (q(z|x)); with `encoder_condition` the encoder sees it too
(q(z|x, c), the standard conditional VAE of Sohn et al., 2015), which lets z keep only
what the condition does not say.

Both decode to *logits*; `decode` applies the sigmoid as the lecture does, and the loss
uses the numerically stable BCE-with-logits, which is the lecture's
BCE(sigmoid(logits), x, reduction='sum') written without the intermediate sigmoid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .condition import TextEmbedding, condition_vector


@dataclass
class VAEConfig:
    arch: str = "mlp"          # "mlp" (the lecture's) or "conv"
    channels: int = 1
    image_size: int = 28
    latent_dim: int = 20
    hidden: int = 400          # hidden units (mlp: the lecture's 400; conv: the bottleneck MLP)
    width: int = 32            # conv: channels of the first conv layer (doubles per stage)
    num_classes: int = 0       # > 0: conditioned on a class label (one-hot)
    text_dim: int = 0          # > 0: conditioned on a text embedding of this size
    vocab_size: int = 0        # the learned text encoder's vocabulary (0: MiniLM embeddings)
    encoder_condition: bool = False  # the encoder sees the condition too (standard CVAE)

    @property
    def in_dim(self) -> int:
        return self.channels * self.image_size * self.image_size

    @property
    def cond_dim(self) -> int:
        return self.text_dim or self.num_classes

    def to_dict(self) -> dict:
        """The config; an unconditional model's leaves the condition fields out (as before)."""
        d = asdict(self)
        if not self.cond_dim:
            for k in ("num_classes", "text_dim", "vocab_size", "encoder_condition"):
                d.pop(k)
        return d


class MLPVAE(nn.Module):
    """The lecture's VAE: x -> 400 -> (mu, logvar) in R^20 -> 400 -> x."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextEmbedding(cfg.text_dim, cfg.vocab_size) if cfg.text_dim else None
        self.fc1 = nn.Linear(cfg.in_dim + (cfg.cond_dim if cfg.encoder_condition else 0), cfg.hidden)
        self.fc21 = nn.Linear(cfg.hidden, cfg.latent_dim)  # mu layer
        self.fc22 = nn.Linear(cfg.hidden, cfg.latent_dim)  # logvar layer
        self.fc3 = nn.Linear(cfg.latent_dim + cfg.cond_dim, cfg.hidden)
        self.fc4 = nn.Linear(cfg.hidden, cfg.in_dim)

    def condition(self, c):
        """The condition as the vector appended to the decoder's (and maybe encoder's) input."""
        return None if c is None or not self.cfg.cond_dim else condition_vector(c, self.cfg.num_classes, self.text)

    def encode(self, x, c=None):
        h = x.reshape(x.shape[0], -1)
        if self.cfg.encoder_condition:
            h = torch.cat([h, self.condition(c)], dim=1)
        h1 = F.relu(self.fc1(h))
        return self.fc21(h1), self.fc22(h1)

    def decode_logits(self, z, c=None):
        if self.cfg.cond_dim:
            z = torch.cat([z, self.condition(c)], dim=1)
        h3 = F.relu(self.fc3(z))
        ch, s = self.cfg.channels, self.cfg.image_size
        return self.fc4(h3).view(-1, ch, s, s)

    def decode(self, z, c=None):
        return torch.sigmoid(self.decode_logits(z, c))

    def reparameterize(self, mu, logvar, eps=None):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std) if eps is None else eps
        return mu + eps * std

    def forward(self, x, c=None, eps=None):
        """eps: the reparameterisation noise (default: drawn here)."""
        mu, logvar = self.encode(x, c)
        z = self.reparameterize(mu, logvar, eps)
        return self.decode_logits(z, c), mu, logvar


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
        self.text = TextEmbedding(cfg.text_dim, cfg.vocab_size) if cfg.text_dim else None
        convs = [nn.Conv2d(c, w, 4, 2, 1), nn.SiLU(),             # s*2 x s*2
                 nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),         # s x s
                 nn.Flatten()]
        if cfg.encoder_condition:   # the condition joins the features before the bottleneck MLP
            self.enc = nn.Sequential(*convs)
            self.enc_fc = nn.Sequential(nn.Linear(2 * w * s * s + cfg.cond_dim, cfg.hidden), nn.SiLU())
        else:
            self.enc = nn.Sequential(*convs, nn.Linear(2 * w * s * s, cfg.hidden), nn.SiLU())
        self.fc_mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.fc_logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.dec = nn.Sequential(
            nn.Linear(cfg.latent_dim + cfg.cond_dim, cfg.hidden), nn.SiLU(),
            nn.Linear(cfg.hidden, 2 * w * s * s), nn.SiLU(),
            nn.Unflatten(1, (2 * w, s, s)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(w, c, 4, 2, 1),
        )

    condition = MLPVAE.condition

    def encode(self, x, c=None):
        h = self.enc(x)
        if self.cfg.encoder_condition:
            h = self.enc_fc(torch.cat([h, self.condition(c)], dim=1))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z, c=None):
        if self.cfg.cond_dim:
            z = torch.cat([z, self.condition(c)], dim=1)
        return self.dec(z)

    decode = MLPVAE.decode
    reparameterize = MLPVAE.reparameterize
    forward = MLPVAE.forward


ARCHS = {"mlp": MLPVAE, "conv": ConvVAE}


def build_vae(cfg: VAEConfig) -> nn.Module:
    return ARCHS[cfg.arch](cfg)


def elbo_terms(logits, x, mu, logvar):
    """Per-batch sums: BCE (the lecture's reconstruction loss) and the KL to N(0, I)."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce, kld

