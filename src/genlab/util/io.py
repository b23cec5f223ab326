"""Atomic, durable file writes: a temporary file in the same directory, flushed to the disk
(fsync), then a rename, then the directory flushed, so an interrupted write -- a crash, a
kill -9, a power cut -- never leaves a half-written or empty file behind, and a failing
command never damages what is already there. A full disk is one clear error."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import GenlabError


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise GenlabError(f"{path}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
            fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
                raise GenlabError(f"{path}: cannot write it ({e.strerror}); what was there before is unchanged") \
                    from None
            raise
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_file(path) -> None:
    """Flush a written file's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Flush a directory's entries (a rename into it) to the disk, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:          # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_tree(tmp, dest) -> Path:
    """Put the finished directory `tmp` at `dest` durably: every file in it flushed, the old
    `dest` (if any) moved aside before the rename and removed after, so at every moment one
    complete copy exists (`dest`, or `dest.old` between the two renames)."""
    tmp, dest = Path(tmp), Path(dest)
    for root, _, files in os.walk(tmp):
        for f in files:
            fsync_file(os.path.join(root, f))
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def check_writable(path) -> None:
    """Refuse, before any work is done, a file that cannot be written: the nearest folder
    of `path` that exists must take a new file (tried, then removed)."""
    path = Path(path)
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir():
        raise GenlabError(f"{path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".genlab-probe.", dir=folder)
    except OSError as e:
        raise GenlabError(f"{path}: cannot write into {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
