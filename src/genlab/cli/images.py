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
    add(s, [api.N.but(default=None, help="number of samples (default 64)")])
    s.add_argument("--out", required=True, help="FILE.png (a grid), FILE.npy (an array) or DIR (one PNG per image)")
    s.add_argument("--seed", type=int, default=None, help="seed for the latents (default: random)")
    s.add_argument("--seeds", default=None, metavar="LIST",
                   help="one image per seed, e.g. 0-35 or 1,5,9 (stylegan2-ada's convention; instead of --n)")
    s.add_argument("--class", dest="label", default=None, metavar="CLASS",
                   help="class-conditional model: the class to draw (index or name; default: all, uniformly)")
    s.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text-conditioned model: the text (default: captions of random training images)")
    s.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="text-conditioned model: one prompt per line, one grid row each (--n per row, default 8; "
                        "the same latents in every row)")
    _trunc(s)
    add_one(s, DEVICE)
    s.set_defaults(func=lambda a: print(_load(a).save_samples(a.n, a.out, seed=a.seed, label=a.label, seeds=a.seeds,
                                                              trunc=a.trunc, trunc_cutoff=a.trunc_cutoff,
                                                              prompt=a.prompt, prompts=a.prompts_file)))

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
    i.add_argument("--space", default="z", choices=["z", "w"],
                   help="z (default) or, for a style-based generator, w: a straight line in W")
    i.add_argument("--prompts", nargs=2, default=None, metavar=("FROM", "TO"),
                   help="text-conditioned model: walk from one text to the other (z fixed per row)")
    add_one(i, DEVICE)
    i.set_defaults(func=lambda a: print(_load(a).save_interpolation(a.pairs, a.steps, a.out, seed=a.seed,
                                                                    space=a.space, prompts=a.prompts)))

    m = command(commands, "style-mix", "copy one image's coarse, middle or fine styles into others (style-based runs)",
                "The style-based generator paper's Figure 3: a grid whose top row holds the --cols\n"
                "images, its left column the --rows images, and each cell the row image with the column\n"
                "image's --styles copied in: coarse (the lowest resolutions: pose, shape, class), middle,\n"
                "fine (the highest: colour, texture), or style layer indices (0-2, 5).",
                "example:\n  genlab style-mix runs/sg --rows 85,100,75 --cols 55,821,1789 --styles coarse --out mix.png")
    m.add_argument("run")
    m.add_argument("--rows", required=True, metavar="SEEDS", help="the destination images' seeds")
    m.add_argument("--cols", required=True, metavar="SEEDS", help="the source images' seeds")
    m.add_argument("--styles", default="coarse", help="coarse (default), middle, fine, or layer indices like 0-2")
    m.add_argument("--out", default="style-mix.png", help="FILE.png or FILE.npy (default style-mix.png)")
    m.add_argument("--class", dest="label", default=None, metavar="CLASS", help="class-conditional: the class")
    _trunc(m, cutoff=False)
    add_one(m, DEVICE)
    m.set_defaults(func=lambda a: print(_load(a).save_style_mix(a.rows, a.cols, a.styles, a.out, trunc=a.trunc or 1.0,
                                                                label=a.label)))

    nz = command(commands, "noise", "one image under many noise draws, and where the noise acts (style-based runs)",
                 "The paper's Figure 4, one row: the image with the fixed noise, --draws images with fresh\n"
                 "noise (the same w), then the per-pixel standard deviation over 100 draws (white: where\n"
                 "the noise inputs change the picture).")
    nz.add_argument("run")
    nz.add_argument("--seed", type=int, default=0)
    nz.add_argument("--draws", type=api.N.parse, default=8, help="images with fresh noise (default 8)")
    nz.add_argument("--out", default="noise.png")
    nz.add_argument("--class", dest="label", default=None, metavar="CLASS")
    add_one(nz, DEVICE)
    nz.set_defaults(func=lambda a: print(_load(a).save_noise(a.seed, a.out, draws=a.draws, label=a.label)))

    tr = command(commands, "truncation", "the truncation trick, seed by seed (style-based runs)",
                 "The paper's Figure 8: one row per seed, one column per psi; w' = w_avg + psi (w - w_avg)\n"
                 "(psi 0: the mean image, 1: no truncation, negative: the opposite of the image).")
    tr.add_argument("run")
    tr.add_argument("--seeds", default="0-5", help="default 0-5")
    tr.add_argument("--psi", default="-1,-0.5,0,0.5,0.7,1", help="default -1,-0.5,0,0.5,0.7,1")
    tr.add_argument("--out", default="truncation.png")
    tr.add_argument("--class", dest="label", default=None, metavar="CLASS")
    add_one(tr, DEVICE)
    tr.set_defaults(func=lambda a: print(_load(a).save_truncation(a.seeds, a.psi, a.out, label=a.label)))


def _trunc(p, cutoff: bool = True) -> None:
    add_one(p, api.TRUNC)
    if cutoff:
        p.add_argument("--trunc-cutoff", type=api.N.parse, default=None, metavar="K",
                       help="truncate only the first K style layers (the coarse ones)")


def _load(a):
    return api.load_for(a.run, a.cmd, device=a.device)
