"""genlab sample | reconstruct | interpolate: images from a trained image run."""
from __future__ import annotations

from .. import api
from .options import add, add_one, command

DEVICE = api.DEVICE


def register(commands) -> None:
    s = command(commands, "sample", "draw new images from a trained run",
                "Write N samples: a PNG grid for FILE.png, or a float32 array of shape (N, H, W) or "
                "(N, H, W, C) with values in [0, 1] for FILE.npy.")
    s.add_argument("run", help="run directory")
    add(s, [api.N], {"n": api.N.default})
    s.add_argument("--out", required=True, help="FILE.png or FILE.npy")
    s.add_argument("--seed", type=int, default=None, help="seed for the latents (default: random)")
    s.add_argument("--class", dest="label", default=None, metavar="CLASS",
                   help="class-conditional GAN: the class to draw (index or name; default: all, uniformly)")
    add_one(s, DEVICE)
    s.set_defaults(func=lambda a: print(_load(a).save_samples(a.n, a.out, seed=a.seed, label=a.label)))

    r = command(commands, "reconstruct", "test images and their reconstructions (alternating rows)")
    r.add_argument("run")
    add_one(r, api.N.but(help="number of test images (default 32)"), 32)
    r.add_argument("--out", default=None, help="FILE.png or FILE.npy (default RUN/reconstructions.png)")
    r.add_argument("--seed", type=int, default=0, help="which test images (default 0)")
    add_one(r, DEVICE)
    r.set_defaults(func=lambda a: print(_load(a).save_reconstructions(a.n, a.out, seed=a.seed)))

    i = command(commands, "interpolate", "walk through latent space (VAE: between test images; GAN: random latents)")
    i.add_argument("run")
    add(i, [api.PAIRS, api.STEPS], {"pairs": api.PAIRS.default, "steps": api.STEPS.default})
    i.add_argument("--out", default=None, help="FILE.png or FILE.npy (default RUN/interpolation.png)")
    i.add_argument("--seed", type=int, default=0)
    add_one(i, DEVICE)
    i.set_defaults(func=lambda a: print(_load(a).save_interpolation(a.pairs, a.steps, a.out, seed=a.seed)))


def _load(a):
    return api.load_for(a.run, a.cmd, device=a.device)
