"""The run directory: atomic writes, validation, and checkpoints that do not match their
config or are corrupt -- always a GenlabError, never damage to what is on disk."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import genlab
from genlab.errors import GenlabError
from genlab.models.vae import VAEConfig, build_vae
from genlab.runs import RunDir, atomic_path, write_bytes_atomic, write_json_atomic


def _leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or
            (p.name.startswith(".") and p.is_file())]


# -- atomic writes -------------------------------------------------------------------------

def test_atomic_writes_leave_no_temp_files(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01" * 1000)
    write_json_atomic(tmp_path / "sub" / "b.json", {"x": [1, 2], "y": "z"})
    write_bytes_atomic(tmp_path / "a.bin", b"second version")   # replace an existing file
    assert (tmp_path / "a.bin").read_bytes() == b"second version"
    assert json.loads((tmp_path / "sub" / "b.json").read_text()) == {"x": [1, 2], "y": "z"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.json", "sub"]


@pytest.mark.parametrize("failure, expect", [
    (RuntimeError("disk full"), (RuntimeError, "disk full")),                       # any failure mid-write
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),                               # a full disk: one line
     (GenlabError, "model.safetensors: cannot write it .*unchanged")),
])
def test_atomic_write_that_fails_keeps_the_old_file(tmp_path, failure, expect):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the good old weights")
    with pytest.raises(expect[0], match=expect[1]):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a new fi")
            raise failure
    assert target.read_bytes() == b"the good old weights"
    assert _leftovers(tmp_path) == []


def test_writes_are_durable_the_file_then_the_folder_is_flushed(tmp_path, monkeypatch):
    """fsync before the rename (the new contents are on disk before its name points at them)
    and of the folder after it (the rename itself survives a power cut)."""
    from genlab.util import io
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")
                                                                   if os.path.exists("/proc/self/fd") else fd)),
                                                    real_fsync(fd)))
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    write_bytes_atomic(tmp_path / "w.bin", b"weights")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    if os.path.exists("/proc/self/fd"):
        assert events[0][1].endswith(".tmp") and events[2][1] == str(tmp_path)
    # a finished directory (an adapter, a converted model) replaces the old one whole
    from genlab.util.io import replace_tree
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "old.txt").write_text("old")
    (tmp_path / "adapter.partial").mkdir()
    (tmp_path / "adapter.partial" / "new.txt").write_text("new")
    events.clear()
    replace_tree(tmp_path / "adapter.partial", tmp_path / "adapter")
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "w.bin"]
    assert [e[0] for e in events] == ["fsync", "fsync"], events     # the file, then the folder


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_a_trained_run_has_no_temp_files_and_the_documented_layout(trained_run):
    assert _leftovers(trained_run) == []
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "state.pt", "metrics.jsonl", "loss.png",
            "samples/epoch_001.png", "samples/epoch_002.png"} <= names
    assert not any(n.endswith((".pt", ".pth", ".bin", ".pkl")) and n != "state.pt" for n in names)
    # state.pt holds only plain tensors and numbers: it loads with weights_only=True
    state = torch.load(trained_run / "state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and state["step"] == 0 and "optimizer" in state["task"]


# -- RunDir validation ---------------------------------------------------------------------

def test_require_rejects_what_is_not_a_run(tmp_path, trained_run):
    with pytest.raises(GenlabError, match="no such run directory"):
        RunDir(tmp_path / "missing").require()
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(GenlabError, match="not a directory"):
        RunDir(tmp_path / "file.txt").require()
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenlabError, match="not a genlab run"):
        RunDir(tmp_path / "empty").require()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"family": "vae"}')
    with pytest.raises(GenlabError, match="no model.safetensors"):
        RunDir(tmp_path / "half").require()
    assert RunDir(trained_run).require().path == trained_run
    with pytest.raises(GenlabError, match="not a genlab run"):
        genlab.load(tmp_path / "empty")


def test_read_config_errors(tmp_path):
    d = RunDir(tmp_path)
    (tmp_path / "config.json").write_text('{"family": "vae", "model": ')
    with pytest.raises(GenlabError, match="corrupt config"):
        d.read_config()
    (tmp_path / "config.json").write_text('{"model": {}}')
    with pytest.raises(GenlabError, match="no 'family' field"):
        d.read_config()
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GenlabError, match="corrupt config"):
        d.read_config()


def test_prepare_new_refuses_to_clobber(run_copy, snapshot):
    before = snapshot(run_copy)
    with pytest.raises(GenlabError, match="already exists"):
        RunDir(run_copy).prepare_new()
    assert snapshot(run_copy) == before
    RunDir(run_copy).prepare_new(overwrite=True)
    left = {p.relative_to(run_copy).as_posix() for p in run_copy.rglob("*") if p.is_file()}
    assert left == set()  # the old run's files are gone, nothing else was there


def test_metrics_survive_a_cut_line(tmp_path):
    d = RunDir(tmp_path)
    d.append_metrics({"epoch": 1, "train_loss": 1.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')            # a crash in the middle of a line
    assert d.read_metrics() == [{"epoch": 1, "train_loss": 1.5}]


def test_weights_round_trip_bit_exactly(tmp_path):
    torch.manual_seed(123)
    m = build_vae(VAEConfig(arch="conv"))
    RunDir(tmp_path).save_weights(m)
    m2 = build_vae(VAEConfig(arch="conv"))
    RunDir(tmp_path).load_weights(m2)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


# -- checkpoints that do not match, or are damaged -----------------------------------------

def _edit_config(run, fn):
    p = run / "config.json"
    cfg = json.loads(p.read_text())
    fn(cfg)
    p.write_text(json.dumps(cfg))


def test_weights_that_do_not_match_the_config(run_copy, snapshot):
    _edit_config(run_copy, lambda c: c["model"].update(latent_dim=16))
    before = snapshot(run_copy)
    with pytest.raises(GenlabError) as e:
        genlab.load(run_copy)
    msg = str(e.value)
    assert "model.safetensors" in msg and "fc21" in msg and "(20, 400)" in msg and "(16, 400)" in msg
    assert snapshot(run_copy) == before


def test_weights_with_a_missing_tensor(run_copy, snapshot):
    tensors = load_file(str(run_copy / "model.safetensors"))
    del tensors["fc4.bias"]
    tensors["extra.weight"] = torch.zeros(3)
    save_file(tensors, str(run_copy / "model.safetensors"))
    before = snapshot(run_copy)
    with pytest.raises(GenlabError, match=r"missing: fc4\.bias; unexpected: extra\.weight"):
        genlab.load(run_copy)
    assert snapshot(run_copy) == before


def test_config_of_another_architecture(run_copy):
    _edit_config(run_copy, lambda c: c["model"].update(arch="conv"))
    with pytest.raises(GenlabError, match="do not match"):
        genlab.load(run_copy)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "header-only"])
def test_corrupt_weights_file(run_copy, snapshot, damage):
    p = run_copy / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes({"garbage": b"\x00" * 7 + b"not safetensors at all" * 50,
                   "truncated": data[: len(data) // 2],
                   "empty": b"",
                   "header-only": data[:200]}[damage])
    before = snapshot(run_copy)
    with pytest.raises(GenlabError, match="corrupt weights file"):
        genlab.load(run_copy)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("edit", [
    {"arch": "transformer"},
    {"latent_dim": "twenty"},
    {"latent_dim": -1},
    {"image_size": 30, "arch": "conv"},
    {"surprise": 1},
], ids=["unknown-arch", "latent-dim-text", "latent-dim-negative", "conv-30px", "unknown-field"])
def test_invalid_model_config_is_a_clear_error(run_copy, edit):
    _edit_config(run_copy, lambda c: c["model"].update(edit))
    with pytest.raises(GenlabError):
        genlab.load(run_copy)


def test_run_of_an_unknown_family(run_copy):
    _edit_config(run_copy, lambda c: c.update(family="diffusion"))
    with pytest.raises(GenlabError, match="a 'diffusion' run"):
        genlab.load(run_copy)


def test_vae_config_labelled_gan(run_copy):
    _edit_config(run_copy, lambda c: c.update(family="gan"))
    with pytest.raises(GenlabError, match="invalid model config"):
        genlab.load(run_copy)


def test_corrupt_resume_state(run_copy):
    (run_copy / "state.pt").write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(GenlabError, match="corrupt resume state"):
        RunDir(run_copy).load_state()
    (run_copy / "state.pt").unlink()
    assert RunDir(run_copy).load_state() is None
