"""genlab eval: sample quality of an image run, held-out loss of a language model."""
from __future__ import annotations

import json

from .. import api
from ..util.errors import GenlabError
from .options import add, add_one, command, note


def register(commands) -> None:
    e = command(
        commands, "eval", "evaluate a run: images (FID/KID/precision/recall, ELBO) or a language model "
        "(held-out loss, perplexity, bits per character)",
        "Sample quality, for VAEs and GANs alike, in the feature space of genlab's\n"
        "dataset classifier (labelled e.g. FID[genlab-mnist]; NOT comparable with Inception\n"
        "FID): FID, KID, precision and recall (k-NN manifolds, k=3, the 5% largest balls left\n"
        "out) of N samples against N training images, each beside its real-data floor (N\n"
        "held-out test images against the same training images), the share of samples per\n"
        "predicted class, and the share recognised with confidence > 0.9. For a VAE also the\n"
        "test negative ELBO and the importance-weighted NLL bound (IWAE, K samples per image),\n"
        "in nats per image.\n"
        "--inception PATH adds the standard Inception FID from local weights (genlab does not\n"
        "download them). Appended to the run's metrics.jsonl and printed as JSON.\n\n"
        "--prompts FILE (one per line) or the built-in sets train / heldout (phrasings used in,\n"
        "or held out of, training): how samples follow their text -- conditional accuracy\n"
        "(MNIST, Fashion-MNIST), Spearman rho of asked vs measured attributes, category accuracy\n"
        "and per-category FID (emoji). --per-prompt samples each (default 100); --trunc PSI for\n"
        "a style-based generator pulls each sample towards its prompt's mean w.\n\n"
        "For a language model: loss (nats per token), perplexity and bits per character on\n"
        "the run's held-out documents (or --text PATH), every token scored once with a\n"
        "sliding window of the model's context (stride: half of it).")
    e.add_argument("run", metavar="RUN_OR_MODEL")
    add(e, [api.N_SAMPLES], {"n_samples": api.N_SAMPLES.default})
    e.add_argument("--seed", type=int, default=0, help="seed for the samples and the reference images")
    add(e, [api.IW_SAMPLES], {"iw_samples": api.IW_SAMPLES.default})
    add_one(e, api.N.but(name="n_test", flag="--n-test", default=None, help="VAE: use only the first N test images"))
    e.add_argument("--no-classifier", action="store_true", help="skip the classifier-feature metrics")
    e.add_argument("--metrics", default=None, metavar="LIST",
                   help="image runs: which metrics, e.g. fid,kid,pr (every image family) or, for a style-based\n"
                        "generator, also ppl_zfull,ppl_wfull,ppl_zend,ppl_wend,ls (default: the usual set)")
    e.add_argument("--prompts", default=None, metavar="FILE",
                   help="conditional image run: prompts, one per line, or the built-in sets train / heldout")
    add(e, [api.PER_PROMPT], {"per_prompt": api.PER_PROMPT.default})
    add_one(e, api.TRUNC.but(help="with --prompts, style-based generators: truncation psi towards each prompt's "
                                  "mean w (default 1: none)"))
    e.add_argument("--inception", default=None, metavar="PATH",
                   help="weights of the FID Inception network (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    e.add_argument("--text", default=None, metavar="PATH",
                   help="language model: score this UTF-8 file instead of the run's held-out documents")
    e.add_argument("--corpus", default=None,
                   help="foundation / fine-tuned model: score this corpus's held-out documents (default "
                        "the fine-tuning corpus, else shakespeare)")
    e.add_argument("--max-tokens", type=api.N.parse, default=None,
                   help="foundation / fine-tuned model: score only the first N tokens")
    add_one(e, api.DEVICE)
    e.set_defaults(func=_eval)


def _eval(a) -> None:
    if a.trunc is not None and a.prompts is None:
        raise GenlabError("--trunc goes with --prompts (how a style-based generator's samples follow their text); "
                          "FID and the other metrics are measured without truncation")
    m = api.open_any(a.run, log=note, device=a.device)
    if hasattr(m, "stream"):  # a language model
        res = m.evaluate(text=a.text, corpus=a.corpus, max_tokens=a.max_tokens, log=True)
    elif hasattr(m, "sample"):
        if a.text is not None:
            raise GenlabError("--text is for language-model runs")
        if a.prompts is not None:
            res = m.evaluate_prompts(a.prompts, per_prompt=a.per_prompt, seed=a.seed, trunc=a.trunc)
            print(json.dumps(res, indent=2))
            return
        res = m.evaluate(iw_samples=a.iw_samples, n_test=a.n_test, n_samples=a.n_samples, seed=a.seed,
                         classifier=not a.no_classifier, inception=a.inception, metrics=a.metrics)
    else:
        raise GenlabError(f"{a.run}: genlab eval takes image runs and language models")
    print(json.dumps(res, indent=2))
