"""A style-based generator (Karras et al., 2019, "A Style-Based Generator Architecture for
GANs"), sized for a CPU, in stylegan2-ada's vocabulary.

    z --mapping (8 FC layers, lr x 0.01)--> w --(one affine per convolution)--> styles
    learned 4x4 constant -> [conv, noise, style] x 2 per resolution, doubling to 32 or 64

- `mapping(z, c, truncation_psi)`: z (normalised) and, for a conditional model, an
  embedding of the class or of the text c -> w, repeated once per style input
  (ws: (B, num_ws, w_dim)).
  Truncation pulls w towards w_avg, the running mean of w tracked while training; for a
  conditional model towards the mean w of each image's own class or text.
- `synthesis(ws, noise_mode)`: the constant, then at every resolution convolutions whose
  features are scaled by a style from w; per-pixel Gaussian noise with a learned strength per
  channel adds stochastic detail. noise_mode "random" (fresh noise), "const" (a fixed draw
  per layer, so the same w always gives the same image) or "none".
- arch "stylegan": the paper the lecture shows -- styles through adaptive instance
  normalisation (AdaIN), nearest upsampling, one RGB output at the end.
- arch "stylegan2": Karras et al. (2020): the style modulates the convolution weights and
  demodulation normalises the output (no AdaIN, so no "droplet" artefacts), bilinear
  upsampling, RGB skip outputs at every resolution. Modulation is applied to the
  activations (x * s, shared conv, then the demodulation factors), which is the same maths
  and runs on the CPU's ordinary convolution instead of a grouped one.

`Discriminator`: stride-2 convolutions with spectral normalisation down to 4x4, minibatch
standard deviation, and a projection term for the class when the model is conditional (see
its docstring for why not StyleGAN2's residual D). The generator uses the equalised
learning rate (weights ~ N(0, 1), scaled at run time by He's constant).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .condition import TextEmbedding

ADAIN, MODULATED = "stylegan", "stylegan2"
ARCHS = (ADAIN, MODULATED)
SQRT2 = math.sqrt(2.0)
CENTER_DRAWS = 512          # draws of z that estimate a condition's mean w (conditional truncation)


@dataclass
class StyleGANConfig:
    arch: str = MODULATED
    channels: int = 1
    image_size: int = 32        # resolution of the synthesis network (a power of two, 8..128)
    out_size: int | None = None  # the data's size when smaller (28: the 32x32 output is cropped)
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 8
    lr_mul: float = 0.01        # the mapping network's learning-rate multiplier
    width: int = 256            # feature maps at 4x4; halved per doubling down to min_width
    min_width: int = 32
    num_classes: int = 0        # > 0: class-conditional (an embedding into the mapping network)
    text_dim: int = 0           # > 0: text-conditional (the text embedding into the mapping network)
    vocab_size: int = 0         # the learned text encoder's vocabulary (0: MiniLM embeddings)
    ema: bool = True

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown style-based architecture {self.arch}")
        if self.num_classes and self.text_dim:
            raise ValueError("a generator is conditioned on a class or on a text, not both")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, not {self.image_size}")
        for k in ("z_dim", "w_dim", "mapping_layers", "width", "min_width"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1")

    @property
    def modulated(self) -> bool:
        """StyleGAN2's weight (de)modulation and skip outputs; False: the paper's AdaIN."""
        return self.arch == MODULATED

    @property
    def resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(math.log2(self.image_size)) + 1)]

    def feature_maps(self, res: int) -> int:
        return max(self.min_width, self.width // (res // 4))

    @property
    def num_ws(self) -> int:
        """Style inputs: one per convolution (the first resolution has one, the others two)."""
        return 2 * len(self.resolutions) - 1

    def layer_resolutions(self) -> list[int]:
        """The resolution each style input acts at."""
        return [4] + [r for r in self.resolutions[1:] for _ in range(2)]

    def to_dict(self) -> dict:
        return asdict(self)


# -- equalised-learning-rate layers -----------------------------------------------------------

class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x):
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x


class EqualConv2d(nn.Module):
    def __init__(self, in_ch, out_ch, kernel, bias=True, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale, self.padding, self.activation = 1 / math.sqrt(in_ch * kernel * kernel), kernel // 2, activation

    def forward(self, x):
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# -- the mapping network -----------------------------------------------------------------------

class MappingNetwork(nn.Module):
    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = EqualLinear(cfg.num_classes or cfg.text_dim, cfg.w_dim) if cfg.num_classes or cfg.text_dim \
            else None
        self.text = TextEmbedding(cfg.text_dim, cfg.vocab_size) if cfg.text_dim else None
        dims = [cfg.z_dim + (cfg.w_dim if self.embed is not None else 0)] + [cfg.w_dim] * cfg.mapping_layers
        self.fc = nn.Sequential(*[EqualLinear(a, b, lr_mul=cfg.lr_mul, activation=True)
                                  for a, b in zip(dims[:-1], dims[1:])])
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False, beta=0.995):
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            e = self.text(c) if self.text is not None else F.one_hot(c, self.cfg.num_classes).to(z.dtype)
            ce = normalize_2nd_moment(self.embed(e))
            x = torch.cat([x, ce], dim=1)
        w = self.fc(x)
        if update_w_avg:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, beta))
        ws = w.unsqueeze(1).repeat(1, self.cfg.num_ws, 1)
        if truncation_psi != 1:
            cut = self.cfg.num_ws if truncation_cutoff is None else truncation_cutoff
            center = self.w_avg if self.embed is None else self.condition_avg(ce).unsqueeze(1)
            ws[:, :cut] = center.lerp(ws[:, :cut], truncation_psi)
        return ws

    @torch.no_grad()
    def condition_avg(self, ce, n=CENTER_DRAWS):
        """The mean w of each condition (ce: its embedding as the layers read it): w averaged
        over `n` fixed draws of z. A conditional model truncates towards it, not towards the
        overall w_avg, which would pull every image away from its class or text (as
        StyleGAN-XL does per class). Computed once per distinct condition in the batch."""
        uniq, inverse = torch.unique(ce, dim=0, return_inverse=True)
        g = torch.Generator().manual_seed(0)
        z = normalize_2nd_moment(torch.randn(n, self.cfg.z_dim, generator=g)).to(ce.device, ce.dtype)
        avg = torch.stack([self.fc(torch.cat([z, u.expand(n, -1)], dim=1)).mean(0) for u in uniq])
        return avg[inverse]


# -- synthesis layers ------------------------------------------------------------------------------

class NoiseInput(nn.Module):
    """Per-pixel Gaussian noise, scaled by a learned strength per channel."""

    def __init__(self, channels: int, res: int, seed: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("noise_const", torch.randn(1, 1, res, res, generator=g))

    def forward(self, x, noise_mode="random"):
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            noise = self.noise_const
        else:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + noise * self.strength


class StyleConv(nn.Module):
    """One convolution of the synthesis network with its style, noise and activation.
    AdaIN (stylegan): normalise each feature map, then scale and shift it by the style.
    Modulation (stylegan2): scale the input features by the style, convolve, divide by the
    norm the modulated weights would have (demodulation)."""

    def __init__(self, cfg, in_ch, out_ch, res, up, seed):
        super().__init__()
        self.adain, self.up = not cfg.modulated, up
        self.affine = EqualLinear(cfg.w_dim, in_ch if not self.adain else 2 * out_ch, bias_init=1.0)
        self.conv = EqualConv2d(in_ch, out_ch, 3, bias=False)
        self.noise = NoiseInput(out_ch, res, seed)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x, w, noise_mode="random"):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest" if self.adain else "bilinear", align_corners=None
                              if self.adain else False)
        if self.adain:
            x = self.noise(self.conv(x), noise_mode)
            x = F.leaky_relu(x + self.bias, 0.2) * SQRT2
            scale, shift = self.affine(w).chunk(2, dim=1)
            x = F.instance_norm(x)
            return x * scale[:, :, None, None] + (shift - 1)[:, :, None, None]
        s = self.affine(w)                                                        # (B, in)
        weight = self.conv.weight * self.conv.scale                               # (out, in, 3, 3)
        demod = ((weight[None] * s[:, None, :, None, None]).square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        x = F.conv2d(x * s[:, :, None, None], weight, padding=1) * demod[:, :, None, None]
        x = self.noise(x, noise_mode)
        return F.leaky_relu(x + self.bias, 0.2) * SQRT2


class ToRGB(nn.Module):
    """A 1x1 convolution to the image's channels, modulated by the style (not demodulated)."""

    def __init__(self, cfg, in_ch):
        super().__init__()
        self.affine = EqualLinear(cfg.w_dim, in_ch, bias_init=1.0)
        self.conv = EqualConv2d(in_ch, cfg.channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1, cfg.channels, 1, 1))

    def forward(self, x, w):
        s = self.affine(w)
        return F.conv2d(x * s[:, :, None, None], self.conv.weight * self.conv.scale) + self.bias


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        res0 = cfg.resolutions
        self.const = nn.Parameter(torch.randn(1, cfg.feature_maps(4), 4, 4))
        self.convs = nn.ModuleList([StyleConv(cfg, cfg.feature_maps(4), cfg.feature_maps(4), 4, False, seed=0)])
        for i, res in enumerate(res0[1:]):
            a, b = cfg.feature_maps(res // 2), cfg.feature_maps(res)
            self.convs.append(StyleConv(cfg, a, b, res, True, seed=2 * i + 1))
            self.convs.append(StyleConv(cfg, b, b, res, False, seed=2 * i + 2))
        if cfg.modulated:   # an RGB output at every resolution, summed as the image grows
            self.torgb = nn.ModuleList([ToRGB(cfg, cfg.feature_maps(r)) for r in res0])
        else:                         # the paper's: one RGB output at the end
            self.torgb = nn.ModuleList([ToRGB(cfg, cfg.feature_maps(res0[-1]))])

    def forward(self, ws, noise_mode="random"):
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.convs[0](x, ws[:, 0], noise_mode)
        skip = self.torgb[0](x, ws[:, 0]) if self.cfg.modulated else None
        for i in range(1, len(self.convs), 2):
            x = self.convs[i](x, ws[:, i], noise_mode)
            x = self.convs[i + 1](x, ws[:, i + 1], noise_mode)
            if skip is not None:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
                skip = skip + self.torgb[(i + 1) // 2](x, ws[:, i + 1])
        return skip if skip is not None else self.torgb[0](x, ws[:, -1])


class Generator(nn.Module):
    """G(z, c) = synthesis(mapping(z, c)); images in [-1, 1] at cfg.image_size."""

    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode="random",
                update_w_avg=False):
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws, noise_mode)


# -- the discriminator --------------------------------------------------------------------------

class Discriminator(nn.Module):
    """Stride-2 4x4 convolutions down to 4x4, minibatch standard deviation, a 3x3
    convolution and two linear layers; spectral normalisation on every layer (Miyato et
    al., 2018) and a projection term for the class. (StyleGAN2's residual, equalised-lr D
    collapsed here on MNIST within a few hundred CPU steps at every learning rate and R1
    weight tried; this one, genlab's sngan discriminator grown to the resolution, did not --
    benchmarks/stylegan.py.)"""

    def __init__(self, cfg: StyleGANConfig, mbstd_group: int = 4):
        super().__init__()
        self.cfg, self.group = cfg, mbstd_group
        res = cfg.resolutions[::-1]                            # e.g. 32, 16, 8, 4
        layers, ch = [], cfg.channels
        for r in res[:-1]:
            out = cfg.feature_maps(r // 2)
            layers += [spectral_norm(nn.Conv2d(ch, out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            ch = out
        self.down = nn.Sequential(*layers)
        self.conv = spectral_norm(nn.Conv2d(ch + 1, ch, 3, 1, 1))
        self.fc = spectral_norm(nn.Linear(ch * 16, 2 * ch))
        self.out = spectral_norm(nn.Linear(2 * ch, 1))
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, 2 * ch)) if cfg.num_classes else None
        if cfg.text_dim:   # projection of the text embedding
            self.text = TextEmbedding(cfg.text_dim, cfg.vocab_size)
            self.text_proj = spectral_norm(nn.Linear(cfg.text_dim, 2 * ch))

    def minibatch_std(self, x):
        """Append the standard deviation of the features across a group of images: a cue
        for D that the images of a batch lack variety (Karras et al., 2018)."""
        b, c, h, w = x.shape
        g = min(self.group, b)
        while b % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])     # (b / g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, img, c=None):
        x = self.down(img)
        x = F.leaky_relu(self.conv(self.minibatch_std(x)), 0.2)
        h = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        out = self.out(h)
        if self.embed is not None:   # projection (Miyato & Koyama, 2018)
            out = out + (self.embed(c) * h).sum(1, keepdim=True)
        if self.cfg.text_dim:
            out = out + (self.text_proj(self.text(c)) * h).sum(1, keepdim=True)
        return out


# -- the whole model ---------------------------------------------------------------------------

class StyleGAN(nn.Module):
    """G, D and G_ema (an exponential moving average of G, which samples are drawn from);
    one state dict holds all three. The interface the GAN trainer and run classes use."""

    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.G = Generator(cfg)
        self.D = Discriminator(cfg)
        self.G_ema = None
        if cfg.ema:
            self.G_ema = Generator(cfg)
            self.G_ema.load_state_dict(self.G.state_dict())
            self.G_ema.requires_grad_(False)

    @property
    def sampler(self) -> Generator:
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        if self.G_ema is None:
            return
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - decay)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] synthesis output -> [0, 1] images at the data's size (a centre crop)."""
        out = self.cfg.out_size or self.cfg.image_size
        if out != x.shape[-1]:
            m = (x.shape[-1] - out) // 2
            x = x[..., m:m + out, m:m + out]
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def generate(self, z, y=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const"):
        """Images in [0, 1] from latents z (and labels y for a conditional model)."""
        return self.to_image(self.sampler(z, y, truncation_psi, truncation_cutoff, noise_mode))

    @torch.no_grad()
    def generate_ws(self, ws, noise_mode="const"):
        return self.to_image(self.sampler.synthesis(ws, noise_mode))


def build_stylegan(cfg: StyleGANConfig) -> StyleGAN:
    return StyleGAN(cfg)


def slerp(a: torch.Tensor, b: torch.Tensor, t) -> torch.Tensor:
    """Spherical interpolation between latents (the paper's choice in Z)."""
    a_n, b_n = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    d = (a_n * b_n).sum(-1, keepdim=True).clamp(-1, 1)
    p = t * torch.acos(d)
    c = F.normalize(b_n - d * a_n, dim=-1)
    return (a_n * torch.cos(p) + c * torch.sin(p)) * torch.lerp(a.norm(dim=-1, keepdim=True),
                                                                b.norm(dim=-1, keepdim=True), t)


def style_groups(cfg: StyleGANConfig) -> dict[str, list[int]]:
    """Which style inputs are coarse, middle and fine: the paper splits 4-8 / 16-32 / 64-1024;
    at genlab's resolutions the styles are split in three by resolution the same way --
    coarse the two lowest resolutions, fine the highest, middle what lies between."""
    layer_res = cfg.layer_resolutions()
    res = cfg.resolutions
    coarse = set(res[:2])
    fine = {res[-1]} if len(res) > 2 else set()
    groups = {"coarse": [i for i, r in enumerate(layer_res) if r in coarse],
              "fine": [i for i, r in enumerate(layer_res) if r in fine]}
    groups["middle"] = [i for i in range(len(layer_res)) if i not in groups["coarse"] + groups["fine"]]
    return groups

