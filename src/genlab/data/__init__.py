"""Datasets and their sources. See images.py (image data), sources.py (where MNIST-style
data comes from), emoji.py (the colour emoji set), text.py (corpora)."""
from pathlib import Path

from . import emoji
from .images import BUILTIN_NAMES, ImageData, load_images, parse_idx
from .sources import BUILTIN, data_root, fetch as _fetch_idx

__all__ = ["ImageData", "load_images", "parse_idx", "BUILTIN", "BUILTIN_NAMES", "data_root", "fetch",
           "list_datasets"]


def fetch(name: str) -> Path:
    """Fetch and verify a built-in image dataset into the cache; its folder."""
    if name == "emoji":
        emoji.obtain(32)
        return data_root() / "emoji"
    return _fetch_idx(name)


def list_datasets() -> list[dict]:
    """Built-in datasets and whether each is cached (verified) already."""
    rows = []
    for name, ds in BUILTIN.items():
        folder = data_root() / name
        cached = all((folder / f).is_file() for f in ds.sha256)
        rows.append({"name": name, "description": ds.description, "cached": cached,
                     "source": ds.registry.rsplit(":", 1)[0] if ds.registry.startswith("npm") else ds.registry})
    rows.append({"name": "emoji", "description": emoji.DESCRIPTION, "cached": emoji._cache_paths(32)[0].is_file(),
                 "source": ", ".join(f"npm:{s.package}@{s.version}" for s in emoji.SETS)})
    return rows
