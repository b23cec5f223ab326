"""Datasets and their sources. See images.py (image data) and sources.py (where it comes from)."""
from .images import ImageData, load_images, parse_idx
from .sources import BUILTIN, data_root, fetch

__all__ = ["ImageData", "load_images", "parse_idx", "BUILTIN", "data_root", "fetch", "list_datasets"]


def list_datasets() -> list[dict]:
    """Built-in datasets and whether each is cached (verified) already."""
    rows = []
    for name, ds in BUILTIN.items():
        folder = data_root() / name
        cached = all((folder / f).is_file() for f in ds.sha256)
        rows.append({"name": name, "description": ds.description, "cached": cached,
                     "source": ds.registry.rsplit(":", 1)[0] if ds.registry.startswith("npm") else ds.registry})
    return rows
