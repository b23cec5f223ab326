"""genlab: generative AI you can run on an ordinary computer.

    import genlab
    run = genlab.train("vae", dataset="mnist", epochs=10, out="runs/my-vae")
    run.save_samples(64, "samples.png", seed=0)
    print(run.evaluate())
    gan = genlab.train("gan", dataset="mnist", time_budget=600, out="runs/my-gan")
    lm = genlab.train("lm", corpus="shakespeare", time_budget=600, out="runs/my-lm")
    print(lm.generate("ROMEO:", max_new_tokens=200, seed=0))
    smol = genlab.load_model("smollm2")          # a real foundation model, offline
    ft = genlab.finetune("smollm2", "shakespeare", method="lora", time_budget=300, out="runs/ft")
"""
from .util.numerics import warm_vml

warm_vml()   # before any model runs: see genlab/util/numerics.py

from .api import (  # noqa: E402
                  LMRun,
                  Run,
                  compress,
                  corpora,
                  dataset_classifier,
                  datasets,
                  export,
                  fetch,
                  finetune,
                  load,
                  load_inception,
                  load_model,
                  merge,
                  models,
                  save_images,
                  train,
)
from .errors import GenlabError  # noqa: E402
from .util.version import __version__  # noqa: E402

__all__ = ["LMRun", "Run", "GenlabError", "compress", "corpora", "dataset_classifier", "datasets", "export", "fetch",
           "finetune", "load", "load_inception", "load_model", "merge", "models", "save_images", "train",
           "__version__"]
