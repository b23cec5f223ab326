"""The dataset classifier: a small CNN that genlab trains once per labelled dataset and
caches under ``$GENLAB_DATA/classifiers/``. Its penultimate layer (128 features) is the
feature space of every image metric (FID/KID/precision-recall are labelled with the
dataset, e.g. ``FID[genlab-mnist]``, because they are not Inception features); its
predictions tell whether generated samples are recognisable and which classes they cover.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import ImageData, data_root
from ..errors import GenlabError
from ..runs import RunDir

RECIPE = 5  # bump when the training recipe changes: cached classifiers are then retrained
# (5: the initial weights come from the seed, no longer from the caller's RNG state)


@dataclass
class ClassifierConfig:
    channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    width: int = 16
    features: int = 128


class ClassifierNet(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(3),
        )
        self.fc = nn.Linear(4 * w * 9, cfg.features)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(cfg.features, cfg.num_classes)

    def features(self, x):
        """Penultimate features (B, 128), the space image metrics are computed in."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


def _cache_key(data: ImageData) -> str:
    name = data.name
    if ":" in name:  # folder:/npy: data -> a stable key from the path and the content
        h = hashlib.sha1(data.train_x[:2000].numpy().tobytes()).hexdigest()[:10]
        name = name.split(":", 1)[0] + "-" + h
    return name


class DatasetClassifier:
    """A trained ClassifierNet plus the name of the dataset it belongs to."""

    def __init__(self, net: ClassifierNet, dataset: str, test_accuracy: float):
        self.net = net.eval()
        self.dataset = dataset
        self.test_accuracy = test_accuracy

    @torch.no_grad()
    def _batched(self, images, fn, batch_size=1000):
        outs = [fn(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: float (N, C, H, W) in [0, 1]."""
        return self._batched(images, self.net.features)

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return self._batched(images, lambda x: F.softmax(self.net(x), -1))

    def class_share(self, images: torch.Tensor) -> list[float]:
        """Share of images assigned to each class (argmax of the classifier)."""
        cls = self.probs(images).argmax(-1)
        counts = torch.bincount(cls, minlength=self.net.cfg.num_classes)
        return (counts.float() / max(1, len(images))).tolist()

    @property
    def label(self) -> str:
        """How metrics computed in this classifier's features are labelled: genlab-DATASET."""
        return f"genlab-{self.dataset}"

    def recognised(self, images: torch.Tensor, threshold: float = 0.9) -> dict:
        """Share of images classified with confidence > threshold, and the class histogram."""
        p = self.probs(images)
        conf, cls = p.max(-1)
        counts = torch.bincount(cls, minlength=self.net.cfg.num_classes)
        return {"recognised": float((conf > threshold).float().mean()),
                "class_share": (counts.float() / max(1, len(images))).tolist()}


def default_epochs(data: ImageData) -> int:
    """Epochs of classifier training: about 180,000 images seen (3 epochs of MNIST), at
    most 60 epochs for a small dataset."""
    return max(3, min(60, round(180_000 / max(1, len(data.train_x)))))


def recipe_key(cfg: ClassifierConfig, epochs: int = 3, seed: int = 0) -> dict:
    """Everything that shapes a trained classifier: the net, the recipe, its length and
    seed, and what the arithmetic depends on (the torch build and its thread count: CPU
    kernels split sums across threads, so another count gives other weights). A cached
    classifier is used only when all of it matches; otherwise it is trained anew."""
    return {"net": asdict(cfg), "recipe": RECIPE, "epochs": epochs, "seed": seed,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _config_for(data: ImageData) -> ClassifierConfig:
    if data.train_y is None or not data.classes:
        raise GenlabError(f"{data.name} has no labels, so genlab cannot train its classifier")
    c, h, _ = data.shape
    return ClassifierConfig(channels=c, image_size=h, num_classes=data.num_classes)


def _cache_dir(data: ImageData) -> RunDir:
    return RunDir(data_root() / "classifiers" / _cache_key(data))


def cached_classifier(data: ImageData, epochs: int | None = None, seed: int = 0) -> DatasetClassifier | None:
    """The cached classifier for `data` if one trained with exactly this recipe is there."""
    epochs = epochs or default_epochs(data)
    cfg = _config_for(data)
    run = _cache_dir(data)
    if not run.is_run():
        return None
    meta = run.read_config()
    if {k: meta.get(k) for k in recipe_key(cfg)} != recipe_key(cfg, epochs, seed):
        return None
    net = ClassifierNet(cfg)
    run.load_weights(net)
    return DatasetClassifier(net, data.name, meta.get("test_accuracy", float("nan")))


def train_classifier(data: ImageData, epochs: int | None = None, seed: int = 0, log=None) -> DatasetClassifier:
    """Train the classifier for `data` from scratch (nothing is read from or written to
    the cache); the same seed on the same machine gives the same weights, bit for bit."""
    epochs = epochs or default_epochs(data)
    cfg = _config_for(data)
    t0 = time.time()
    net, acc = _build_and_train(cfg, data, epochs, seed)
    if log:
        log(f"classifier for {data.name}: test accuracy {acc:.2%} ({time.time() - t0:.0f}s)")
    return DatasetClassifier(net, data.name, acc)


def save_classifier(data: ImageData, clf: DatasetClassifier, epochs: int | None = None, seed: int = 0) -> None:
    """Cache `clf` (trained by train_classifier with these epochs and seed) for `data`."""
    epochs = epochs or default_epochs(data)
    run = _cache_dir(data)
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_weights(clf.net)
    run.write_config({"family": "classifier", "dataset": data.name, "test_accuracy": clf.test_accuracy,
                      **recipe_key(clf.net.cfg, epochs, seed)})


def get_classifier(data: ImageData, train: bool = True, epochs: int | None = None, seed: int = 0,
                   log=None) -> DatasetClassifier:
    """The cached classifier for `data`, trained (a minute or two on 2 cores) if missing
    or if the cached one was trained another way (see recipe_key)."""
    epochs = epochs or default_epochs(data)
    cfg = _config_for(data)
    clf = cached_classifier(data, epochs, seed)
    if clf is not None:
        return clf
    run = _cache_dir(data)
    if not train:
        raise GenlabError(f"no cached classifier for {data.name} (run `genlab data classifier {data.name}`)")
    log = log or (lambda m: print(f"genlab: {m}", file=sys.stderr, flush=True))
    if run.is_run():
        old = run.read_config()
        changed = sorted(k for k, v in recipe_key(cfg, epochs, seed).items() if old.get(k) != v)
        log(f"the cached {data.name} classifier was trained another way ({', '.join(changed)}); "
            f"training it again (cached in {run.path}) ...")
    else:
        log(f"training the {data.name} classifier once (cached in {run.path}) ...")
    clf = train_classifier(data, epochs, seed, log=log)
    save_classifier(data, clf, epochs, seed)
    return clf


def _build_and_train(cfg: ClassifierConfig, data: ImageData, epochs: int, seed: int):
    """(trained net, test accuracy). Everything that shapes the net -- its initial weights
    included -- comes from `seed`, never from the caller's RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ClassifierNet(cfg)
        return net, _train(net, data, epochs, seed)


def _train(net, data: ImageData, epochs, seed) -> float:
    # (enable_grad: the first metric that needs the classifier may be computed under no_grad)
    with torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x, y = data.train_x, data.train_y
        bs = 128
        steps = epochs * math.ceil(len(x) / bs)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), bs):
                idx = perm[i:i + bs]
                xb = _augment(ImageData.to_float(x[idx]), g)
                out = _outliers(xb, g)
                logits = net(torch.cat([xb, out]))
                # Outlier exposure (Hendrycks et al., 2019): real images -> their class,
                # noise / scrambled images -> the uniform distribution, so that the
                # classifier is *not* confident on things that are not images of the data.
                loss = F.cross_entropy(logits[:len(xb)], y[idx]) \
                    - 0.5 * F.log_softmax(logits[len(xb):], -1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(ImageData.to_float(data.test_x[i:i + 1000])).argmax(-1)
                              for i in range(0, len(data.test_x), 1000)])
        return float((pred == data.test_y).float().mean())


def _outliers(x, g):
    """Non-images of the same size: uniform noise, sparse noise, blank images, and real
    images with their pixels scrambled (same brightness statistics, no shape)."""
    n = max(4, len(x) // 4)
    k = n // 4
    shape = x.shape[1:]
    noise = torch.rand((k,) + shape, generator=g)
    sparse = (torch.rand((k,) + shape, generator=g) < 0.2).float()
    flat = torch.rand((k, 1, 1, 1), generator=g).expand((k,) + shape)  # blank / constant
    src = x[: n - 3 * k].flatten(1)
    scrambled = src[:, torch.randperm(src.shape[1], generator=g)].view((n - 3 * k,) + shape)
    return torch.cat([noise, sparse, flat, scrambled])


def _augment(x, g):
    """Random shifts of up to 2 pixels (zero padding): cheap, and helps generalise."""
    b = x.shape[0]
    pad = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]] if b else x

