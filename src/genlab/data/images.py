"""Image datasets held whole in memory as uint8 tensors, batched by indexing.

    data = load_images("mnist")          # built-in (see sources.py)
    data = load_images("folder:PATH")    # PNG/JPEG tree; class sub-folders become labels
    data = load_images("npy:PATH")       # .npy images, or .npz with x/images and y/labels

`ImageData.train_x` is (N, C, H, W) uint8; `batch(idx)` gives float32 in [0, 1].
Every dataset has a fixed train/test split: the official one for MNIST-style data, a
deterministic 90/10 split for folders (by a hash of each file's path, so adding images
never moves old ones between splits) and arrays (a fixed permutation).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import GenlabError
from . import captions as _captions, emoji, sources

BUILTIN_NAMES = (*sources.BUILTIN, "emoji")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TEST_FRACTION = 0.1


@dataclass
class ImageData:
    name: str
    train_x: torch.Tensor            # (N, C, H, W) uint8
    train_y: torch.Tensor | None     # (N,) int64 or None
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    classes: tuple = ()
    train_captions: list | None = None   # per image, a list of descriptions (emoji: name, short names ...)
    test_captions: list | None = None
    captioner: object = field(default=None, repr=False)  # () -> (train, test) captions, made when first asked

    @property
    def has_captions(self) -> bool:
        return self.train_captions is not None or self.captioner is not None

    def captions(self, split: str = "train") -> list:
        """Per image of the split, its list of captions (data/captions.py)."""
        if self.train_captions is None and self.captioner is not None:
            self.train_captions, self.test_captions = self.captioner()
        if self.train_captions is None:
            raise GenlabError(f"{self.name} has no captions (captioned: {', '.join(_captions.CAPTIONED)}, or "
                              "folder:PATH with a metadata.jsonl or captions.txt)")
        self.split(split)
        return self.train_captions if split == "train" else self.test_captions

    @property
    def shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, which: str) -> tuple:
        if which == "train":
            return self.train_x, self.train_y
        if which == "test":
            return self.test_x, self.test_y
        raise GenlabError(f"unknown split '{which}' (train or test)")

    @staticmethod
    def to_float(x: torch.Tensor) -> torch.Tensor:
        """uint8 (.., C, H, W) -> float32 in [0, 1], exactly like torchvision's ToTensor."""
        return x.to(torch.float32).div_(255.0)

    def describe(self) -> str:
        c, h, w = self.shape
        lab = f", {self.num_classes} classes" if self.classes else ", unlabelled"
        return (f"{self.name}: {len(self.train_x):,} train / {len(self.test_x):,} test, "
                f"{h}x{w}x{c}{lab}")

    def class_counts(self) -> list[tuple[str, int, int]]:
        """(class, training images, test images) per class."""
        if self.train_y is None or not self.classes:
            return []
        tr = torch.bincount(self.train_y, minlength=self.num_classes).tolist()
        te = torch.bincount(self.test_y, minlength=self.num_classes).tolist() if self.test_y is not None \
            else [0] * self.num_classes
        return list(zip(self.classes, tr, te))

    def examples(self, per_class: int = 8, seed: int = 0) -> torch.Tensor:
        """Up to `per_class` training images of each class (one class per row), floats in [0, 1]."""
        g = torch.Generator().manual_seed(seed)
        if self.train_y is None:
            idx = torch.randperm(len(self.train_x), generator=g)[:per_class * 8]
            return self.to_float(self.train_x[idx])
        rows = []
        for k in range(self.num_classes):
            idx = torch.nonzero(self.train_y == k).flatten()
            pick = idx[torch.randperm(len(idx), generator=g)[:per_class]]
            row = self.to_float(self.train_x[pick])
            pad = torch.ones((per_class - len(row),) + tuple(self.shape))
            rows.append(torch.cat([row, pad]))
        return torch.cat(rows)


# -- IDX (MNIST format) -------------------------------------------------------------------

def parse_idx(data: bytes, what: str = "IDX file") -> np.ndarray:
    """Parse an IDX file (uint8 payload) into an array; clear errors for bad files."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise GenlabError(f"{what}: not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise GenlabError(f"{what}: unsupported IDX element type 0x{dtype_code:02x} (need uint8)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise GenlabError(f"{what}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    need = int(np.prod(dims)) if dims else 0
    if len(data) - header != need:
        raise GenlabError(f"{what}: truncated or corrupt IDX file "
                          f"({len(data) - header} payload bytes, shape {dims} needs {need})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_builtin(name: str) -> ImageData:
    ds = sources.BUILTIN[name]
    files = sources.obtain(name)
    arr = {k: parse_idx(v, f"{name}/{k}") for k, v in files.items()}

    def images(k):
        return torch.from_numpy(arr[k].copy()).unsqueeze(1)  # (N, 1, 28, 28)

    def labels(k):
        return torch.from_numpy(arr[k].astype(np.int64))

    data = ImageData(name, images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
                     images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"),
                     ds.classes)
    if name in _captions.TEMPLATES:
        def captioner():
            train, thresholds = _captions.label_captions(name, data.train_x, data.train_y)
            test, _ = _captions.label_captions(name, data.test_x, data.test_y, thresholds)
            return train, test
        data.captioner = captioner
    return data


# -- folder:PATH --------------------------------------------------------------------------

def _is_test(key: str) -> bool:
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big")
    return h / 2**32 < TEST_FRACTION


def _load_folder(path: str, image_size: int | None, channels: int | None) -> ImageData:

    root = Path(path).expanduser()
    if not root.is_dir():
        raise GenlabError(f"folder:{path}: no such directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GenlabError(f"folder:{path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    rel = [p.relative_to(root) for p in files]
    # Class labels: the first sub-folder level, when every image sits in one.
    classes = ()
    if all(len(r.parts) >= 2 for r in rel):
        classes = tuple(sorted({r.parts[0] for r in rel}))
    mode = {1: "L", 3: "RGB", None: None}.get(channels)
    if channels not in (None, 1, 3):
        raise GenlabError(f"--channels must be 1 or 3, not {channels}")
    imgs, bad = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                if mode is None:
                    mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (0, 0, 0, 255))  # transparent -> black
                    im = Image.alpha_composite(bg, im)
                im = im.convert(mode)
                if image_size is None:
                    image_size = min(im.size)  # the first image fixes the size
                if im.size != (image_size, image_size):
                    im = _center_crop_resize(im, image_size)
                imgs.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            bad.append(f"{p.relative_to(root)} ({type(e).__name__})")
    if bad:
        raise GenlabError(f"folder:{path}: {len(bad)} unreadable image(s), e.g. {bad[0]}")
    x = np.stack(imgs)
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = x.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(x))
    y = None
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[r.parts[0]] for r in rel], dtype=torch.int64)
    test = torch.tensor([_is_test(r.as_posix()) for r in rel])
    if test.all() or not test.any():  # tiny folders: still keep both splits non-empty
        test = torch.zeros(len(rel), dtype=torch.bool)
        test[:: max(2, int(1 / TEST_FRACTION))] = True
        if len(rel) == 1:
            test[:] = False
    data = _split(f"folder:{path}", x, y, test, classes)
    caps = _captions.read_folder_captions(root, [r.as_posix() for r in rel])
    if caps is not None:
        missing = [r.as_posix() for r, c in zip(rel, caps) if not c]
        if missing:
            raise GenlabError(f"folder:{path}: {len(missing)} image(s) have no caption, e.g. {missing[0]} "
                              "(give every image a line in metadata.jsonl / captions.txt)")
        train = ~test if (~test).any() and test.any() else torch.ones(len(rel), dtype=torch.bool)
        tmask = test if (~test).any() and test.any() else torch.ones(len(rel), dtype=torch.bool)
        data.train_captions = [c for c, t in zip(caps, train.tolist()) if t]
        data.test_captions = [c for c, t in zip(caps, tmask.tolist()) if t]
    return data


def _center_crop_resize(im, size):
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def _split(name, x, y, test_mask, classes) -> ImageData:
    train = ~test_mask
    if train.sum() == 0 or test_mask.sum() == 0:  # a single image: train on it, test on it
        train = test_mask = torch.ones(len(x), dtype=torch.bool)
    return ImageData(name, x[train].contiguous(), None if y is None else y[train],
                     x[test_mask].contiguous(), None if y is None else y[test_mask], classes)


# -- npy:PATH -----------------------------------------------------------------------------

def _load_npy(path: str, image_size: int | None, channels: int | None) -> ImageData:
    p = Path(path).expanduser()
    if not p.is_file():
        raise GenlabError(f"npy:{path}: no such file")
    y = None
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                xk = next((k for k in ("x", "images", "arr_0") if k in z.files), None)
                if xk is None:
                    raise GenlabError(f"npy:{path}: .npz has no 'x' or 'images' array (has {', '.join(z.files)})")
                x = z[xk]
                yk = next((k for k in ("y", "labels") if k in z.files), None)
                y = z[yk] if yk else None
        else:
            x = np.load(p, allow_pickle=False)
    except GenlabError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise GenlabError(f"npy:{path}: not a readable numpy array ({type(e).__name__}: {e})") from None
    x = _images_to_nchw(x, f"npy:{path}")
    if channels is not None and x.shape[1] != channels:
        if channels == 1 and x.shape[1] == 3:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            raise GenlabError(f"--channels must be 1 or 3, not {channels}")
    if image_size is not None and x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(x.float(), size=(image_size, image_size),
                                            mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    classes = ()
    if y is not None:
        y = np.asarray(y)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise GenlabError(f"npy:{path}: labels must be non-negative integers, one per image")
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
        y = torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    n_test = max(1, int(round(len(x) * TEST_FRACTION))) if len(x) > 1 else 0
    test = torch.zeros(len(x), dtype=torch.bool)
    test[perm[:n_test]] = True
    return _split(f"npy:{path}", x, y, test, classes)


def _images_to_nchw(x: np.ndarray, what: str) -> torch.Tensor:
    if x.dtype == object or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise GenlabError(f"{what}: images must be a numeric array, not {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise GenlabError(f"{what}: need shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    if x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise GenlabError(f"{what}: need 1 or 3 channels and at least one image, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise GenlabError(f"{what}: images contain NaN or inf")
        if x.min() < 0 or x.max() > 1:
            raise GenlabError(f"{what}: float images must lie in [0, 1] (found {x.min():.3g}..{x.max():.3g})")
        x = np.round(x * 255)
    elif x.min() < 0 or x.max() > 255:
        raise GenlabError(f"{what}: integer images must lie in 0..255")
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8)))


def load_images(spec: str, image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Load a dataset by name: a built-in name, folder:PATH or npy:PATH."""
    if not isinstance(spec, str) or not spec:
        raise GenlabError("no dataset given")
    if spec.startswith("folder:"):
        return _load_folder(spec[len("folder:"):], image_size, channels)
    if spec.startswith("npy:"):
        return _load_npy(spec[len("npy:"):], image_size, channels)
    if spec == "emoji":
        return _load_emoji(image_size, channels)
    if spec in sources.BUILTIN:
        data = _load_builtin(spec)
        if (image_size not in (None, 28)) or (channels not in (None, 1)):
            raise GenlabError(f"{spec} is 28x28 grey; --image-size/--channels apply to folder: and npy: data")
        return data
    raise GenlabError(f"unknown dataset '{spec}' (built-in: {', '.join(BUILTIN_NAMES)}; "
                      "or folder:PATH, npy:PATH)")


def _load_emoji(image_size: int | None, channels: int | None) -> ImageData:
    """The emoji dataset (data/emoji.py) as (N, 3, S, S) images, categories as labels, with captions."""
    if channels not in (None, 3):
        raise GenlabError("emoji is RGB: --channels 3 (or leave it out)")
    d = emoji.obtain(image_size or 32)
    x = torch.from_numpy(np.ascontiguousarray(d["x"].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(d["y"])
    test = torch.from_numpy(d["test"])
    caps = d["captions"]
    return ImageData("emoji", x[~test], y[~test], x[test], y[test], emoji.CATEGORIES,
                     train_captions=[c for c, t in zip(caps, d["test"]) if not t],
                     test_captions=[c for c, t in zip(caps, d["test"]) if t])
