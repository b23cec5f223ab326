"""genlab compress: prune, quantize or distil a model and measure it beside the original."""
from __future__ import annotations

from .. import api
from .options import command, note

POSITIVE = api.N.parse  # a whole number >= 1


def register(commands) -> None:
    cp = command(
        commands, "compress", "prune, quantize (int8) or distil a model, and measure it beside the original",
        "MODEL: a genlab GPT run, smollm2 or a Hugging Face directory, a VAE or GAN run.\n"
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
        "                      Layers where int8 is slower than float on this machine stay float\n"
        "                      (the report names them; --int8-layers all: int8 everywhere).\n"
        "  --distill --student \"layers=2,dim=128\"   (GPT runs) train a smaller GPT on the teacher's\n"
        "                      temperature-softened outputs plus the data loss (--temperature, --alpha).\n"
        "What applies: GPT runs all of these; Hugging Face models, VAE and GAN runs --prune and\n"
        "--quantize. Methods combine (distil, then prune, then quantize).\n"
        "The new model loads like any other (genlab generate / eval / sample). Every run prints and\n"
        "writes (OUT/report.md, report.json) one table: parameters, size on disk, latency at batch 1\n"
        "and a larger batch, generation tokens/s (language models) and quality (val loss and\n"
        "perplexity; VAE test loss; GAN FID in the dataset classifier's features), original and\n"
        "compressed measured in the same process.",
        "examples:\n"
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
    cp.add_argument("--int8-layers", default="faster", choices=["faster", "all"],
                    help="--quantize: faster (default): every layer is timed in float and int8 on its real "
                         "shapes and stays float where int8 is slower; all: int8 everywhere (smallest file)")
    cp.add_argument("--distill", action="store_true", help="train a smaller student on the model's outputs")
    cp.add_argument("--student", default=None, metavar="SPEC",
                    help='layers=N,dim=D[,heads=H][,inner=I]; unnamed settings follow the teacher')
    cp.add_argument("--steps", type=POSITIVE, default=None, help="--distill: optimisation steps")
    cp.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="--distill: seconds of training")
    cp.add_argument("--temperature", type=float, default=2.0, help="--distill: softening temperature T (default 2)")
    cp.add_argument("--alpha", type=float, default=0.9,
                    help="--distill: weight of the teacher's term; 1 - alpha goes to the data loss (default 0.9)")
    cp.add_argument("--lr", type=float, default=None,
                    help="learning rate (default: the run's for --distill, a quarter of it for fine-tuning)")
    cp.add_argument("--eval-tokens", type=POSITIVE, default=None,
                    help="held-out tokens scored (default 32768; 8192 for Hugging Face models)")
    cp.add_argument("--batch", type=POSITIVE, default=None,
                    help="the larger batch for latency (default 16; 8 for Hugging Face models; 256 images)")
    cp.add_argument("--gen-tokens", type=POSITIVE, default=64, help="tokens generated to time (default 64)")
    cp.add_argument("--fid-samples", type=POSITIVE, default=2000, help="GAN: samples for the FID (default 2000)")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cp.set_defaults(func=_compress)


def _compress(a) -> None:
    rep = api.compress(a.model, a.out, prune=a.prune, structured=a.structured, quantize=a.quantize,
                       distill=a.distill, student=a.student, finetune_steps=a.finetune_steps,
                       steps=a.steps, time_budget=a.time_budget, temperature=a.temperature,
                       alpha=a.alpha, lr=a.lr, smooth=a.smooth, int8_layers=a.int8_layers,
                       eval_tokens=a.eval_tokens, batch=a.batch,
                       gen_tokens=a.gen_tokens, fid_samples=a.fid_samples, seed=a.seed,
                       overwrite=a.overwrite, progress=False if a.no_progress else None, log=note)
    print(rep["table"])
    print(f"written to {rep['out']} (report.md, report.json)")
