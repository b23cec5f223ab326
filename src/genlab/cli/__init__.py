"""The `genlab` command: one module per verb group (data, train, images, evaluate, text,
llm, compress), each adding its sub-commands and running them through the Python API
(genlab.api) -- the CLI imports nothing else of genlab but its option declarations.

User mistakes print one line on stderr and exit with code 2 (no traceback).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..util.errors import GenlabError
from ..util.version import __version__
from . import compress, data, evaluate, guard, images, llm, serve, text, train
from .options import Parser, sub

# the sub-commands, in the order `genlab --help` lists them
VERBS = (data.register, train.register, images.register, evaluate.register, text.register, llm.register,
         compress.register, llm.register_reward, guard.register, serve.register)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="genlab", description=(
        "genlab: generative AI you can run on an ordinary computer. Train a VAE or a GAN "
        "on real images in minutes, sample it, evaluate it; train a GPT on a text corpus and "
        "generate from it. Every command writes into a run "
        "directory (config.json, model.safetensors, metrics.jsonl, samples/, loss.png)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  genlab data fetch mnist\n"
               "  genlab train vae --dataset mnist --epochs 10 --out runs/vae\n"
               "  genlab train gan --dataset mnist --time-budget 600 --out runs/gan\n"
               "  genlab sample runs/vae --n 64 --out samples.png --seed 0\n"
               "  genlab eval runs/vae --iw-samples 100\n"
               "  genlab train lm --corpus shakespeare --out runs/lm\n"
               "  genlab generate runs/lm --prompt \"ROMEO:\" --max-new-tokens 500\n"
               "  genlab guard play --level 3\n"
               "  genlab serve                      # the playground on http://127.0.0.1:8000/\n")
    p.add_argument("--version", action="version", version=f"genlab {__version__}")
    commands = sub(p, "cmd", "COMMAND")
    for register in VERBS:
        register(commands)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (head, less) has gone: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0

