"""genlab models | export | finetune | merge | reward: foundation models, fine-tuning and
reward models."""
from __future__ import annotations

import json

from .. import api
from .options import add, command, exit_code, given, note, sub, warn


def register(commands) -> None:
    mo = command(commands, "models", "list the built-in foundation models",
                 "Foundation models genlab runs offline. Any command that takes MODEL\n"
                 "(generate, chat, eval, finetune) also takes a local Hugging Face directory\n"
                 "(config.json + *.safetensors + tokenizer; Llama, GPT-2 and other causal LMs),\n"
                 "a genlab run, a fine-tuning run, a PEFT adapter directory, or a Hub id\n"
                 "(org/name) when this machine has a network.")
    command(sub(mo, "models_cmd", "ACTION"), "list",
            "built-in models and whether they are installed and converted").set_defaults(func=_models)

    ex = command(commands, "export", "write a genlab GPT run (or a fine-tuning run) as a Hugging Face model",
                 "--format hf: a genlab GPT run becomes a GPT2LMHeadModel directory\n"
                 "(config.json, model.safetensors, tokenizer, chat template) that transformers loads\n"
                 "and that gives the same logits. A fine-tuning run is written merged.",
                 "example:\n  genlab export runs/lm --format hf --out runs/lm-hf")
    ex.add_argument("run")
    ex.add_argument("--format", default="hf", choices=["hf"], help="hf: a Hugging Face directory")
    ex.add_argument("--out", required=True, help="the directory to write")
    ex.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    ex.set_defaults(func=lambda a: api.export(a.run, a.out, format=a.format, overwrite=a.overwrite) and None)

    ft_family = api.family("finetune")
    ft = command(commands, "finetune", ft_family.help, ft_family.description, ft_family.epilog)
    add(ft, ft_family.all_options())
    ft.set_defaults(func=lambda a: exit_code(api.finetune(**given(a, ft_family.all_options()), warn=warn)))

    mg = command(commands, "merge", "fold a LoRA run's adapter into the weights (a Hugging Face directory)",
                 "Writes base + (alpha/r) BA as plain weights; the merged model gives the\n"
                 "same outputs as the base model with the adapter.")
    mg.add_argument("run")
    mg.add_argument("--out", default=None, help="default RUN/merged")
    mg.add_argument("--overwrite", action="store_true")
    mg.set_defaults(func=lambda a: api.merge(a.run, a.out, overwrite=a.overwrite) and None)



def register_reward(commands) -> None:
    rw = command(commands, "reward", "Bradley-Terry reward models: train, score, compare two models",
                 "A reward model learns from preference pairs ({\"prompt\", \"chosen\",\n"
                 "\"rejected\"} JSONL) a score with P(chosen > rejected) = sigmoid(r_c - r_r), on\n"
                 "all-MiniLM-L6-v2 sentence embeddings. compare samples one reply per prompt from\n"
                 "MODEL and from --baseline (temperature 1) and reports MODEL's win rate under the\n"
                 "reward model and its KL divergence from the baseline (nats per reply).")
    actions = sub(rw, "reward_cmd", "ACTION")
    rm_family = api.family("reward")
    rt = command(actions, "train", rm_family.help)
    add(rt, rm_family.all_options(), {"epochs": 200, "on_error": "stop"})
    rt.set_defaults(func=lambda a: api.train("reward", **given(a, rm_family.all_options())) and None)
    rs = command(actions, "score", "score one reply to one prompt")
    rs.add_argument("run")
    rs.add_argument("--prompt", required=True)
    rs.add_argument("--response", required=True)
    rs.set_defaults(func=lambda a: print(f"{api.reward_score(a.run, a.prompt, a.response):.4f}"))
    rc = command(actions, "compare", "win rate of MODEL over --baseline, and the KL between them")
    rc.add_argument("run", help="the reward model run")
    rc.add_argument("--model", required=True)
    rc.add_argument("--baseline", required=True)
    rc.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    rc.add_argument("--max-new-tokens", type=api.N.parse, default=48)
    rc.add_argument("--seed", type=int, default=0)
    rc.set_defaults(func=lambda a: print(json.dumps(api.reward_compare(
        a.run, a.model, a.baseline, a.prompts, max_new_tokens=a.max_new_tokens, seed=a.seed, log=note), indent=2)))


def _models(a) -> None:
    for row in api.models():
        state = "converted" if row["converted"] else ("installed" if row["installed"] else "not installed")
        print(f"{row['name']:<10} {state:<13} {row['description']}  [{row['source']}]")
    print("also: a local Hugging Face directory, a genlab run, a fine-tuning run, a PEFT adapter "
          "directory, or org/name from the Hub (with a network)")
