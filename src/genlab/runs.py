"""The run directory: the one place that reads and writes it.

A run directory holds everything about one training run:

    config.json         everything needed to rebuild the model (family, arch, sizes, data)
    model.safetensors   the weights (never pickle)
    state.pt            only for --resume: optimizer, RNG and loop position (weights_only=True)
    metrics.jsonl       one JSON object per logged epoch / step / evaluation
    samples/            PNG grids per epoch
    loss.png            the loss plot
    human_eval.jsonl    people's real-or-fake judgements of its samples (genlab serve's page)

All writes are atomic and durable (util/io.py: a temporary file in the same directory,
fsynced, then a rename, then the directory fsynced), so an interrupted write never leaves
a half-written file behind, and a failing command never damages what is already there.
Under torchrun only rank 0 writes (the others' writes are no-ops: util/dist.py).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .util.dist import writer
from .util.errors import GenlabError
from .util.io import atomic_path, write_bytes_atomic, write_json_atomic  # noqa: F401 (re-exported)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
METRICS = "metrics.jsonl"
HUMAN_EVAL = "human_eval.jsonl"   # people's real-or-fake judgements of samples (genlab serve)
SAMPLES = "samples"
STATE_FORMAT = 2   # 2: the checkpoint's weights live in state.pt too (1: beside it only)


def default_run_dir(family: str, data: str) -> Path:
    """runs/FAMILY-DATA, or runs/FAMILY-DATA-N when that run exists (DATA: a dataset or
    corpus name, or the last part of a folder:/npy:/text: path)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{family}-{Path(data.split(':', 1)[-1]).name}").strip("-")
    out, i = Path("runs") / stem, 2
    while RunDir(out).is_run():
        out, i = Path("runs") / f"{stem}-{i}", i + 1
    return out


def state_mismatch(expected: dict, given: dict) -> tuple[list, list, tuple | None]:
    """How a state dict `given` fails to fit the one a module `expected`: (missing names,
    unexpected names, the first (name, given shape, expected shape) that differs)."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    shape = next(((k, tuple(given[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in given and tuple(given[k].shape) != tuple(v.shape)), None)
    return missing, extra, shape


def _errno_of(path) -> int:
    """ENOSPC when the disk holding `path` is (nearly) full, else EIO."""
    try:
        return errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < 1 << 20 else errno.EIO
    except OSError:
        return errno.EIO


def _write_error(path, e: Exception) -> OSError:
    """A library's failed write (torch's or safetensors' own error) as the OSError it was."""
    code = _errno_of(path)
    why = "No space left on device" if code == errno.ENOSPC else f"write failed: {str(e).splitlines()[0][:120]}"
    return OSError(code, why)


class RunDir:
    """Reads and writes the files of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- creation / validation -------------------------------------------------------
    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file()

    def require(self) -> "RunDir":
        """Raise a clear error unless this is a run directory with weights."""
        if not self.path.exists():
            raise GenlabError(f"{self.path}: no such run directory")
        if not self.path.is_dir():
            raise GenlabError(f"{self.path}: not a directory (expected a run directory)")
        if not self.is_run():
            raise GenlabError(f"{self.path}: not a genlab run (no {CONFIG})")
        if not (self.path / WEIGHTS).is_file():
            raise GenlabError(f"{self.path}: run has no {WEIGHTS} (training never saved)")
        return self

    def prepare_new(self, overwrite: bool = False) -> None:
        """Make the directory for a fresh run; refuse to clobber an existing run."""
        if not writer():
            return
        if self.path.exists() and not self.path.is_dir():
            raise GenlabError(f"{self.path}: exists and is not a directory")
        if self.is_run() and not overwrite:
            raise GenlabError(
                f"{self.path}: a run already exists here (use --resume to continue it, "
                "--overwrite to replace it, or another --out)")
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in (CONFIG, WEIGHTS, STATE, METRICS, "loss.png", "last.safetensors", "tokenizer.json"):
                p = self.path / name
                if p.exists():
                    p.unlink()
            samples = self.path / SAMPLES
            if samples.is_dir():
                for p in samples.glob("*.png"):
                    p.unlink()

    # -- config ------------------------------------------------------------------------
    def read_config(self) -> dict:
        p = self.path / CONFIG
        try:
            cfg = json.loads(p.read_text())
        except FileNotFoundError:
            raise GenlabError(f"{self.path}: not a genlab run (no {CONFIG})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GenlabError(f"{p}: corrupt config ({e})") from None
        if not isinstance(cfg, dict) or "family" not in cfg:
            raise GenlabError(f"{p}: not a genlab config (no 'family' field)")
        return cfg

    def write_config(self, cfg: dict) -> None:
        if not writer():
            return
        write_json_atomic(self.path / CONFIG, cfg)

    # -- weights -----------------------------------------------------------------------
    def save_weights(self, module: torch.nn.Module | dict, name: str = WEIGHTS) -> None:
        """Save the module's state dict (or a state dict). A tensor shared by two names (tied weights, e.g. a
        GPT's embedding and output head) is stored once; the metadata records the tie."""
        if not writer():
            return
        tensors, tied, seen = {}, {}, {}
        for k, v in (module if isinstance(module, dict) else module.state_dict()).items():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else None
            if key is not None and key in seen:
                tied[k] = seen[key]
                continue
            if key is not None:
                seen[key] = k
            tensors[k] = v.detach().contiguous().cpu()
        meta = {"format": "pt", "producer": "genlab"}
        if tied:
            meta["tied"] = json.dumps(tied, sort_keys=True)
        with atomic_path(self.path / name) as tmp:
            try:
                save_file(tensors, str(tmp), metadata=meta)
            except (SafetensorError, RuntimeError) as e:  # a failed write (a full disk)
                raise _write_error(tmp, e) from None

    def load_weights(self, module: torch.nn.Module, name: str = WEIGHTS) -> None:
        """Load weights into `module`, checking every name and shape against it."""
        p = self.path / name
        try:
            tensors = load_file(str(p))
            with safe_open(str(p), framework="pt") as f:
                tied = json.loads((f.metadata() or {}).get("tied", "{}"))
            for k, src in tied.items():
                tensors[k] = tensors[src]
        except FileNotFoundError:
            raise GenlabError(f"{p}: missing weights file") from None
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise GenlabError(f"{p}: corrupt weights file ({e})") from None
        missing, extra, shape = state_mismatch(module.state_dict(), tensors)
        if missing or extra:
            raise GenlabError(
                f"{p}: weights do not match the model in {CONFIG} "
                f"(missing: {', '.join(missing[:3]) or '-'}; unexpected: {', '.join(extra[:3]) or '-'})")
        if shape:
            raise GenlabError(f"{p}: tensor {shape[0]} has shape {shape[1]}, but the model in {CONFIG} needs {shape[2]}")
        module.load_state_dict(tensors)

    # -- resume state ------------------------------------------------------------------
    def save_state(self, state: dict) -> None:
        if not writer():
            return
        with atomic_path(self.path / STATE) as tmp:
            try:
                torch.save({**state, "format": STATE_FORMAT}, tmp)
            except RuntimeError as e:  # torch's writer reports a failed write (a full disk) so
                raise _write_error(tmp, e) from None

    def load_state(self) -> dict | None:
        p = self.path / STATE
        if not p.is_file():
            return None
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means an unusable file
            raise GenlabError(f"{p}: corrupt resume state ({type(e).__name__})") from None
        fmt = state.get("format", 1) if isinstance(state, dict) else 1
        if not isinstance(fmt, int) or fmt > STATE_FORMAT:
            raise GenlabError(f"{p}: written by a newer genlab (checkpoint format {fmt}; this one reads up to "
                              f"{STATE_FORMAT}): upgrade genlab to resume it")
        return state

    def has_state(self) -> bool:
        return (self.path / STATE).is_file()

    # -- metrics -----------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        """Append one JSON line (appends are line-atomic for our small records)."""
        self.append_record(METRICS, record)

    def read_metrics(self) -> list[dict]:
        return self.read_records(METRICS)

    def append_record(self, name: str, record: dict, durable: bool = False) -> None:
        """Append one JSON line to the run's JSONL file `name` (metrics.jsonl, human_eval.jsonl);
        `durable`: fsynced before returning (a record a person made, not one a rerun remakes)."""
        if not writer():
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.path / name, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                if durable:
                    os.fsync(f.fileno())
        except OSError as e:
            kept = "the last checkpoint is unchanged" if name == METRICS else "the records before it are kept"
            raise GenlabError(f"{self.path / name}: cannot write it ({e.strerror or e}); {kept}") from None

    def read_records(self, name: str) -> list[dict]:
        p = self.path / name
        if not p.is_file():
            return []
        out = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: skip it, keep the rest
        return out

    def rewrite_metrics(self, records: list[dict]) -> None:
        if not writer():
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        write_bytes_atomic(self.path / METRICS, data.encode())

    @property
    def samples_dir(self) -> Path:
        d = self.path / SAMPLES
        d.mkdir(parents=True, exist_ok=True)
        return d
