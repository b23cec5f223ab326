"""The FID Inception (genlab.metrics.inception): architecture, loading, errors.

Fast and offline: random weights only (the real pytorch-fid file is never downloaded),
a handful of forward passes on 2 tiny images.
"""
from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save_file

from genlab.errors import GenlabError
from genlab.metrics import inception as inc
from genlab.metrics.inception import INCEPTION_URL, InceptionFeatures, download_inception, load_inception

# Parameter count (weights and biases) of torchvision's Inception3 without aux logits,
# derived layer by layer from its source: 23,834,568 with the 1000-class fc; the FID
# network's fc has 1008 classes, i.e. 8 * (2048 + 1) = 16,392 more.
INCEPTION3_NO_AUX_1000 = 23_834_568
FID_INCEPTION_PARAMS = INCEPTION3_NO_AUX_1000 + 8 * 2049  # 23,850,960

# A sample of pytorch-fid / torchvision Inception3 state-dict keys and their shapes.
KNOWN_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.weight": (32,),
    "Conv2d_1a_3x3.bn.bias": (32,),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2a_3x3.conv.weight": (32, 32, 3, 3),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch5x5_1.conv.weight": (48, 192, 1, 1),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5c.branch_pool.conv.weight": (64, 256, 1, 1),
    "Mixed_5d.branch3x3dbl_3.conv.weight": (96, 96, 3, 3),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6c.branch7x7dbl_2.conv.weight": (160, 160, 7, 1),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small, busy machine two threads oversubscribe the CPU and
    a 299x299 forward pass becomes ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = InceptionFeatures().eval()
    with torch.no_grad():
        for mod in m.modules():
            # variance-preserving init, so that the features are not vanishingly small
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            # non-trivial BatchNorm statistics, so that a reload that dropped them would show
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _state(m):
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def _cheap_state(m):
    """The model's keys and shapes with zero-stride placeholder tensors (torch.save
    writes one element each): the loader's checks without writing 95 MB."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in m.state_dict().items()}


def test_architecture_keys_and_parameter_count(model):
    sd = model.state_dict()
    for k, shape in KNOWN_KEYS.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in sd)
    # 94 BasicConv2d (6 entries each with num_batches_tracked) + fc.weight + fc.bias
    assert len(sd) == 94 * 6 + 2
    n = sum(v.numel() for k, v in sd.items() if k.endswith((".weight", ".bias")))
    assert n == FID_INCEPTION_PARAMS == 23_850_960
    assert n == sum(p.numel() for p in model.parameters())


def test_reload_gives_identical_features(model, tmp_path):
    state = _state(model)
    st_path = tmp_path / "inception.safetensors"
    pth_path = tmp_path / "x.pth"
    save_file(state, str(st_path))
    torch.save(state, pth_path)
    from_st, from_pth = load_inception(st_path), load_inception(pth_path)
    for m in (from_st, from_pth):
        assert not m.training
        assert not any(p.requires_grad for p in m.parameters())
        sd = m.state_dict()
        assert set(sd) == set(state)
        assert all(torch.equal(sd[k], state[k]) for k in state)

    g = torch.Generator().manual_seed(1)
    gray = torch.rand(2, 1, 28, 28, generator=g)
    rgb = torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        f_gray, f_rgb = model(gray), model(rgb)
        assert f_gray.shape == f_rgb.shape == (2, 2048)
        assert f_gray.dtype == torch.float32
        assert torch.isfinite(f_gray).all() and torch.isfinite(f_rgb).all()
        assert f_gray.abs().max() > 1e-3 and not torch.equal(f_gray[0], f_gray[1])
        assert torch.equal(from_st(gray), f_gray)
        assert torch.equal(from_st(rgb), f_rgb)
        assert torch.equal(from_pth(rgb), f_rgb)
        # one channel is repeated to three: same features as the explicit 3-channel image
        assert torch.equal(from_pth(gray.repeat(1, 3, 1, 1)), f_gray)


def test_old_state_dict_without_num_batches_tracked_loads(model, tmp_path):
    # state dicts saved by old PyTorch versions have no BatchNorm num_batches_tracked
    state = {k: v for k, v in _cheap_state(model).items() if not k.endswith("num_batches_tracked")}
    p = tmp_path / "old.pth"
    torch.save(state, p)
    assert p.stat().st_size < 1_000_000
    m = load_inception(p)
    assert not m.fc.weight.any() and m.Mixed_7c.branch_pool.bn.num_batches_tracked == 0


def test_bad_input_shape():
    m = InceptionFeatures()
    with pytest.raises(GenlabError, match="1 or 3"):
        m(torch.rand(2, 2, 8, 8))


def _one_line_error(path) -> str:
    with pytest.raises(GenlabError) as info:
        load_inception(path)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_path(tmp_path):
    msg = _one_line_error(tmp_path / "nope.pth")
    assert "not found" in msg and INCEPTION_URL in msg and "nope.pth" in msg


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors", "garbage.bin"])
def test_garbage_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x00\x01 this is not a weights file \xff" * 10)
    assert name in _one_line_error(p)


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], p)
    assert "not an Inception state dict" in _one_line_error(p)


def test_missing_unexpected_and_misshapen_keys(model, tmp_path):
    state = _cheap_state(model)

    missing = dict(state)
    del missing["Mixed_6b.branch7x7_2.conv.weight"]
    p = tmp_path / "missing.pth"
    torch.save(missing, p)
    msg = _one_line_error(p)
    assert "missing" in msg and "Mixed_6b.branch7x7_2.conv.weight" in msg

    extra = dict(state)
    extra["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    p = tmp_path / "extra.pth"
    torch.save(extra, p)
    assert "AuxLogits.fc.weight" in _one_line_error(p)

    wrong = dict(state)
    wrong["fc.weight"] = torch.zeros(1000, 2048)
    wrong["fc.bias"] = torch.zeros(1000)
    p = tmp_path / "wrong.pth"
    torch.save(wrong, p)
    msg = _one_line_error(p)
    assert "fc." in msg and "1000" in msg


def test_download_is_atomic_offline(tmp_path, monkeypatch):
    payload = b"fake weights " * 1000

    class FakeResponse(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(inc.urllib.request, "urlopen", fake_urlopen)
    dest = download_inception(tmp_path / "w" / "inception.pth")
    assert urls == [INCEPTION_URL]
    assert dest == tmp_path / "w" / "inception.pth" and dest.read_bytes() == payload
    # a directory as dest keeps the released file name
    assert download_inception(tmp_path).name == inc.INCEPTION_FILENAME

    def failing_urlopen(url, timeout=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(inc.urllib.request, "urlopen", failing_urlopen)
    with pytest.raises(GenlabError, match="cannot download"):
        download_inception(tmp_path / "fail" / "x.pth")
    assert list((tmp_path / "fail").iterdir()) == []  # no partial file left behind
