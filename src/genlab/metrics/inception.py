"""The FID Inception network: Inception-v3 as in the standard FID implementation.

This is the network of TensorFlow's original FID code (the Inception-v3 graph released as
``inception-2015-12-05``), with the weights ported to PyTorch by pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``, see `INCEPTION_URL`). It is torchvision's
``Inception3`` (no aux logits, a 1008-class ``fc`` as in the TF graph) with the blocks
patched the way pytorch-fid patches them to match the TF graph:

- ``Mixed_5b/5c/5d`` (InceptionA), ``Mixed_6b..6e`` (InceptionC) and ``Mixed_7b``
  (InceptionE) average-pool their pool branch with ``count_include_pad=False``;
- ``Mixed_7c`` (InceptionE) max-pools its pool branch.

Everything is written out here (torchvision is not a dependency); the parameter names are
those of torchvision's ``Inception3`` / pytorch-fid's model, so pytorch-fid's weights file
loads with ``strict=True``. The features are the 2048-d ``pool3`` output (the adaptive
average pool after ``Mixed_7c``); ``fc`` is kept only so the released state dict loads
as is. Inputs are resized to 299x299 (bilinear, ``align_corners=False``) and scaled from
[0, 1] to [-1, 1], as pytorch-fid does.

genlab never downloads the weights by itself: `load_inception(path)` takes a local file
(``.pth``/``.pt`` state dict, or ``.safetensors`` with the same keys); `download_inception`
fetches the file for users who have internet access.
"""
from __future__ import annotations

import os
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..errors import GenlabError
from ..runs import state_mismatch
from ..util.io import fsync_dir, fsync_file

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 + INCEPTION_FILENAME)
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF 2015-12-05 graph has 1008 logits (1000 classes + 8 unused)

__all__ = ["InceptionFeatures", "load_inception", "download_inception", "INCEPTION_URL",
           "INCEPTION_FILENAME", "FEATURE_DIM"]


# -- building blocks (names and shapes as torchvision's Inception3) -------------------------

class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps=0.001) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class FIDInceptionA(nn.Module):
    """InceptionA; the pool branch averages without the zero padding (as TF)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)

        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)

        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)

        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """InceptionB (grid reduction 35 -> 17), unchanged from torchvision."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)

        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(nn.Module):
    """InceptionC; the pool branch averages without the zero padding (as TF)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)

        c7 = channels_7x7
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))

        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))

        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch7x7 = self.branch7x7_1(x)
        branch7x7 = self.branch7x7_2(branch7x7)
        branch7x7 = self.branch7x7_3(branch7x7)

        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)

        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """InceptionD (grid reduction 17 -> 8), unchanged from torchvision."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)

        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))

        branch7x7x3 = self.branch7x7x3_1(x)
        branch7x7x3 = self.branch7x7x3_2(branch7x7x3)
        branch7x7x3 = self.branch7x7x3_3(branch7x7x3)
        branch7x7x3 = self.branch7x7x3_4(branch7x7x3)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)

        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class _InceptionE(nn.Module):
    """InceptionE's layers; the two FID variants differ only in the pool branch."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)

        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))

        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def _pool(self, x):
        raise NotImplementedError

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)

        branch_pool = self.branch_pool(self._pool(x))

        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionE_1(_InceptionE):
    """First InceptionE (Mixed_7b): average pool without the zero padding (as TF)."""

    def _pool(self, x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionE_2(_InceptionE):
    """Second InceptionE (Mixed_7c): max pool in the pool branch (as the TF graph)."""

    def _pool(self, x):
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


# -- the network ---------------------------------------------------------------------------

class InceptionFeatures(nn.Module):
    """FID Inception-v3 returning the 2048-d pool3 features.

    ``forward(images)``: float images (N, C, H, W) in [0, 1], C = 1 (repeated to 3) or 3,
    any size (resized to 299x299) -> (N, 2048) float features. Randomly initialised: use
    `load_inception` for the real weights.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # Not used for features: present so that the released state dict loads strictly.
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise GenlabError(
                "Inception features need images shaped (N, 1 or 3, H, W), "
                f"got {tuple(images.shape)}")
        x = images.to(self.fc.weight.dtype)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        # As pytorch-fid: resize first (always), then scale [0, 1] -> [-1, 1].
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_1a_3x3(x)     # N x 32 x 149 x 149
        x = self.Conv2d_2a_3x3(x)     # N x 32 x 147 x 147
        x = self.Conv2d_2b_3x3(x)     # N x 64 x 147 x 147
        x = self.maxpool1(x)          # N x 64 x 73 x 73
        x = self.Conv2d_3b_1x1(x)     # N x 80 x 73 x 73
        x = self.Conv2d_4a_3x3(x)     # N x 192 x 71 x 71
        x = self.maxpool2(x)          # N x 192 x 35 x 35
        x = self.Mixed_5b(x)          # N x 256 x 35 x 35
        x = self.Mixed_5c(x)          # N x 288 x 35 x 35
        x = self.Mixed_5d(x)          # N x 288 x 35 x 35
        x = self.Mixed_6a(x)          # N x 768 x 17 x 17
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)          # N x 768 x 17 x 17
        x = self.Mixed_7a(x)          # N x 1280 x 8 x 8
        x = self.Mixed_7b(x)          # N x 2048 x 8 x 8
        x = self.Mixed_7c(x)          # N x 2048 x 8 x 8
        x = self.avgpool(x)           # N x 2048 x 1 x 1 (pool3)
        return torch.flatten(x, 1)    # N x 2048


# -- weights -------------------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    msg = str(e)
    if "Weights only load failed" in msg:
        # torch's message suggests weights_only=False (arbitrary code execution): keep only
        # the actual reason, which follows "WeightsUnpickler error:".
        _, _, reason = msg.partition("WeightsUnpickler error:")
        reason = next((s.strip() for s in reason.splitlines() if s.strip()), "")
        msg = ("not a plain state dict that torch.load(weights_only=True) can read"
               + (f": {reason}" if reason else ""))
    lines = [s.strip() for s in msg.splitlines() if s.strip()]
    text = lines[0] if lines else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_state_dict(p: Path) -> Mapping:
    if p.suffix.lower() == ".safetensors":
        return load_file(str(p), device="cpu")
    return torch.load(p, map_location="cpu", weights_only=True)


def load_inception(path) -> InceptionFeatures:
    """The FID Inception with the weights at `path`, in eval mode, without gradients.

    `path`: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict,
    read with ``torch.load(..., weights_only=True)``) or a ``.safetensors`` file with the
    same keys. Raises `GenlabError` (one line) if the file is missing, unreadable, or does
    not hold exactly this network's tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "not found" if not p.exists() else "not found (not a file)"
        raise GenlabError(
            f"Inception weights {what} at {p}: genlab does not download them; give the path "
            f"of pytorch-fid's {INCEPTION_FILENAME} (from {INCEPTION_URL})")
    try:
        state = _read_state_dict(p)
    except Exception as e:  # unpickling/safetensors/IO errors all mean "not a weights file"
        raise GenlabError(f"{p}: cannot read Inception weights ({_one_line(e)})") from None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise GenlabError(
            f"{p}: not an Inception state dict (expected a mapping of names to tensors, "
            f"as in {INCEPTION_FILENAME})")

    # Built without memory or random init: every tensor is checked, then filled from `state`.
    with torch.device("meta"):
        model = InceptionFeatures()
    expected = model.state_dict()
    state = dict(state)
    # BatchNorm's step counter is absent from state dicts saved by old PyTorch versions; it
    # plays no part in eval mode, so a missing one is filled in rather than rejected.
    for k, v in expected.items():
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = torch.zeros(v.shape, dtype=v.dtype)
    missing, extra, shape = state_mismatch(expected, state)
    if missing or extra:
        def few(keys):
            return (", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                    if keys else "-")
        raise GenlabError(
            f"{p}: not the FID Inception weights (missing keys: {few(missing)}; "
            f"unexpected keys: {few(extra)})")
    if shape:
        raise GenlabError(f"{p}: not the FID Inception weights (tensor {shape[0]} has shape {shape[1]}, "
                          f"expected {shape[2]})")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def download_inception(dest) -> Path:
    """Download pytorch-fid's Inception weights from `INCEPTION_URL` to `dest` and return
    the file's path (`dest` may be a directory: the file then keeps its released name).

    Needs internet access; genlab never calls this by itself. The file is written to a
    temporary name next to `dest` and renamed when complete, so an interrupted download
    never leaves a partial weights file.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / INCEPTION_FILENAME
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise GenlabError(
            f"{dest}: cannot write the Inception weights there ({_one_line(e)})") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(INCEPTION_URL, timeout=60) as resp:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
            except OSError as e:  # URLError, HTTPError, timeouts are OSErrors
                raise GenlabError(
                    f"cannot download the Inception weights from {INCEPTION_URL} "
                    f"({_one_line(e)})") from None
        fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
