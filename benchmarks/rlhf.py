"""RLHF on SmolLM2-135M-Instruct on this machine: the "tone" demonstration (the default) -- rankings that
prefer a register (a King James verse on the topic over SmolLM2's own modern paragraph,
genlab.llm.examples), a reward model fitted on each half of them, and base vs DPO vs RLOO
vs PPO at equal wall-clock budgets.

    python benchmarks/rlhf.py                    # 30 minutes per method (about 2.5 hours on 2 cores)
    python benchmarks/rlhf.py --budget 600       # seconds per method
    python benchmarks/rlhf.py --only rloo,ppo    # some methods (base is always measured)
    python benchmarks/rlhf.py --only rloo --kl-target 15   # beta adapted to hold KL near 15 nats/reply

Every method is a LoRA fine-tune (r 8) of SmolLM2 with the shared loop: DPO on the
preference pairs (beta 0.1), RLOO and PPO against the reward model of the odd-numbered
pairs (`genlab reward train --half 1`) on the pairs' prompts. Each is judged on held-out
topics (never in training) by sampling one reply per prompt (T = 1) from it and from the
base: the win rate against the base under the training reward model and under the
held-out one (the even-numbered pairs, `--half 2`), with 95% intervals; KL to the base
(nats per reply, from the method's own samples); mean reply length (tokens); benign
utility on 40 ordinary requests from guard/data/benign.txt (greedy, 32 tokens): the share
answered (not refused, not empty), and -- since a degenerate reply is "answered" too --
the replies' relevance (MiniLM cosine between request and reply, mean) and distinct-2
(the share of a reply's word bigrams that are distinct; 1 = no repetition); and seconds
per training step. One example reply per method shows what the reward model was made to
like, and two ordinary requests what became of the model's other answers.

`--demo guardrails`: rankings that prefer keeping the secret (`genlab guard rankings`:
SmolLM2's own replies under level 1's system prompt to the input guard's 243 examples --
attempts on the secret and ordinary requests, none of them in the attack suite or the
benign set -- ranked by the leak scorer: a resisting reply above a leak, a refusal above a
leaking reply, an answer to an ordinary request above a refusal; training secrets
disjoint from the evaluation's 20), reward models on each half, then the same four rows,
each judged on held-out prompts (the attack suite's first messages with the evaluation
secrets, and ordinary requests, all under level 1's system prompt) and with the game's
attack suite at level 1 (`genlab guard attack --level 1 --secrets 20`): full and partial
leaks, beside the untuned model behind the prompt-level guards (levels 2-4). Benign
utility there is measured on 80 requests of guard/data/benign.txt under level 1's system
prompt.

    python benchmarks/rlhf.py --demo guardrails --budget 900
    python benchmarks/rlhf.py --demo guardrails --benign-only   # the benign columns again, on the saved runs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "rlhf"
COMMON = dict(method="lora", batch_size=2, block_size=256, eval_examples=16, log_interval=5, progress=False,
              overwrite=True)
METHODS = ("dpo", "rloo", "ppo")
REFUSING = ("i'm sorry", "i am sorry", "i can't", "i cannot", "as an ai", "sorry",
            "i'm not able", "i am not able", "unfortunately, i", "i won't", "i will not")


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _err(msg):
    print(msg, file=sys.stderr, flush=True)


def _reward_model(args, prefs, out: Path, half: int):
    """The reward model of one half of the rankings: fitted afresh, or (--benign-only) the saved one."""
    from genlab.families.reward import RewardModel, train_reward
    if args.benign_only and out.exists():
        return RewardModel(out)
    return train_reward(prefs, out, half=half, overwrite=True, log=_err)


def build(args):
    """(preference file, training prompts, held-out prompts, RM train, RM held-out)."""
    from genlab.llm.examples import PROMPTS, scripture_instructions, scripture_preferences, scripture_topics
    from genlab.llm.hf import HFModel
    from genlab.llm.sample import sample_responses
    train_t, held_t = scripture_topics()
    prefs_path = OUT / "prefs.jsonl"
    if not prefs_path.exists():
        base = HFModel.load("smollm2")
        inst = scripture_instructions(train_t, per_topic=2, seed=1)
        t0 = time.monotonic()
        rejected, _ = sample_responses(base, [e["prompt"] for e in inst], max_new_tokens=48, seed=0)
        prefs = scripture_preferences(inst, rejected)
        OUT.mkdir(parents=True, exist_ok=True)
        prefs_path.write_text("".join(json.dumps(e) + "\n" for e in prefs))
        print(f"preference set: {len(prefs)} pairs (a KJV verse chosen over SmolLM2's own reply), "
              f"built in {time.monotonic() - t0:.0f} s -> {prefs_path}")
    prefs = [json.loads(x) for x in prefs_path.read_text().splitlines()]
    prompts_path = OUT / "prompts.txt"
    prompts_path.write_text("\n".join(e["prompt"] for e in prefs) + "\n")
    rms = {}
    for half, name in ((1, "rm-train"), (2, "rm-heldout")):
        rms[name] = _reward_model(args, prefs_path, OUT / name, half)
    held = [PROMPTS[i % len(PROMPTS)].format(t) for i, t in enumerate(held_t)]
    return prefs_path, prompts_path, held, rms["rm-train"], rms["rm-heldout"]


def build_guardrails(args):
    """(preference file, RL prompts, held-out prompts, RM train, RM held-out, eval secrets)
    for the guardrail demonstration."""
    from genlab import api
    from genlab.guard.attacks import ATTACKS, secrets_for
    from genlab.guard.levels import system_prompt
    from genlab.llm.data import Prompt
    out = OUT / "guardrails"
    data = out / "data"
    if not (data / "prefs.jsonl").exists():
        t0 = time.monotonic()
        api.guard_rankings("smollm2", data, per_message=2, eval_secrets=args.secrets, eval_seed=0, log=_err)
        _err(f"rankings built in {time.monotonic() - t0:.0f} s")
    rms = {}
    for half, name in ((1, "rm-train"), (2, "rm-heldout")):
        rms[name] = _reward_model(args, data / "prefs.jsonl", out / name, half)
    secrets = secrets_for(args.secrets, 0)
    benign = _benign()
    held = [Prompt(a.turns[0], system_prompt(1, secrets[i % len(secrets)])) for i, a in enumerate(ATTACKS)]
    held += [Prompt(r, system_prompt(1, secrets[i % len(secrets)])) for i, r in enumerate(benign[80:98])]
    return data / "prefs.jsonl", data / "prompts.jsonl", held, rms["rm-train"], rms["rm-heldout"], secrets


def _benign() -> list:
    return [x.strip() for x in (ROOT / "src/genlab/guard/data/benign.txt").read_text().splitlines()
            if x.strip() and not x.startswith("#")]


def answered(reply: str) -> bool:
    r = reply.strip().lower()
    return bool(r) and not any(x in r[:80] for x in REFUSING)


def benign(model, requests, secrets=None, n_tokens: int = 32) -> dict:
    """Ordinary requests, one greedy reply each (`n_tokens` new tokens; under level 1's system
    prompt when `secrets` are given): the share answered (not refused, not empty) -- which a
    degenerate reply also passes -- so beside it the reply's relevance (MiniLM cosine between
    request and reply, mean) and distinct-2 (the share of the reply's word bigrams that are
    distinct: 1 = no repetition), and the replies themselves."""
    from genlab.encoders.text import minilm
    from genlab.guard.levels import system_prompt
    replies = []
    for i, r in enumerate(requests):
        chat = model.new_chat(system_prompt(1, secrets[i % len(secrets)])) if secrets else model.new_chat()
        replies.append(model.reply(chat, r, temperature=0, max_new_tokens=n_tokens).strip())
    emb = minilm()
    rel = (emb(list(requests)) * emb([x or "." for x in replies])).sum(1)
    d2 = []
    for x in replies:
        w = x.lower().split()
        pairs = list(zip(w, w[1:]))
        d2.append(len(set(pairs)) / len(pairs) if pairs else 0.0)
    return {"utility": sum(answered(x) for x in replies) / len(replies), "relevance": float(rel.mean()),
            "distinct2": sum(d2) / len(d2),
            "benign_replies": [{"request": q, "reply": x} for q, x in zip(requests, replies)]}


def attack_level1(spec: str, out: Path, secrets: int, levels="1") -> dict:
    """The attack suite against `spec` at `levels`: {level: (leaks, partial, attempts)}."""
    from genlab import api
    s = api.guard_attack(spec, out, levels=levels, secrets=secrets, seed=0, benign=0, overwrite=True,
                         log=lambda *a: None, progress=False)
    res = {}
    for lv, r in s["levels"].items():
        n = sum(c["n"] for c in r["attacks"].values())
        res[lv] = {"leaks": sum(c["leaks"] for c in r["attacks"].values()),
                   "partial": sum(c["partial"] for c in r["attacks"].values()), "attempts": n,
                   "worst": sorted(((c["rate"], a) for a, c in r["attacks"].items()), reverse=True)[:3]}
    return res


def judge(name, model, base, held, rm, rm_held, summary=None) -> dict:
    from genlab.families.reward import compare
    from genlab.llm.sample import sample_responses
    a = compare(rm, model, base, held, log=lambda s: None)
    b = compare(rm_held, model, base, held, log=lambda s: None)
    texts, seqs = sample_responses(model, held, 48, seed=0)
    row = {"method": name, "win_train": a["win_rate"], "win_train_ci": a["win_rate_ci95"],
           "win_heldout": b["win_rate"], "win_heldout_ci": b["win_rate_ci95"], "kl": a["kl_to_baseline"],
           "reply_tokens": sum(len(r) for _, r in seqs) / len(seqs), "example": {"prompt": held[0], "reply": texts[0]}}
    if summary:
        row["steps"] = summary.get("iters")
        row["s_per_step"] = summary["step_seconds"] / max(1, summary["iters"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="tone", choices=("tone", "guardrails"), help="which demonstration (default tone)")
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds of training per method (default 1800)")
    ap.add_argument("--only", default=",".join(METHODS), help="methods, comma-separated (dpo, rloo, ppo)")
    ap.add_argument("--dpo-lr", type=float, default=5e-4)
    ap.add_argument("--rl-lr", type=float, default=5e-4)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--kl-target", type=float, default=None,
                    help="RLOO / PPO: adapt the KL coefficient towards this many nats per reply (Ziegler et al.); "
                         "their runs and rows are then named e.g. rloo-kl15 (and rloo-b0.2 for --kl-coef 0.2)")
    ap.add_argument("--secrets", type=int, default=20, help="guardrails: evaluation secrets (default 20)")
    ap.add_argument("--benign-only", action="store_true",
                    help="train nothing: measure the benign requests again on the runs saved by the last run "
                         "(base and --only's methods) and print its table with them")
    args = ap.parse_args()
    methods = [m for m in args.only.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {', '.join(bad)} (available: {', '.join(METHODS)})")
    from genlab.api import finetune
    from genlab.families.finetune import load_finetuned
    from genlab.llm.hf import HFModel
    guard = args.demo == "guardrails"
    out_root = OUT / "guardrails" if guard else OUT
    if guard:
        prefs, prompts, held, rm, rm_held, secrets = build_guardrails(args)
        requests = _benign()[:80]
    else:
        prefs, prompts, held, rm, rm_held = build(args)
        requests, secrets = _benign()[:40], None
    base = HFModel.load("smollm2")

    if args.benign_only:   # re-measure the benign columns of the saved runs; nothing is trained
        res = out_root / "results.json"
        if not res.exists():
            ap.error(f"--benign-only: no results in {res} yet (run the benchmark first)")
        saved = json.loads(res.read_text())
        rows = saved["rows"]
        for r in rows:
            name = r["method"]
            if name != "base" and name.split("-")[0] not in methods:
                continue
            model = base if name == "base" else load_finetuned(out_root / name, log=lambda *a: None)
            r.update(benign(model, requests, secrets))
            _err(f"{name}: benign answered {r['utility']:.0%}, relevance {r['relevance']:.3f}, "
                 f"distinct-2 {r['distinct2']:.3f}")
        args.budget = saved["budget"]
    else:
        def row(name, model, spec, summary=None):
            r = judge(name, model, base, held, rm, rm_held, summary)
            r.update(benign(model, requests, secrets))
            if guard:
                levels = "1,2,3,4" if name == "base" else "1"
                r["attack"] = attack_level1(spec, out_root / f"attack-{name}", args.secrets, levels)
            return r

        rows = [row("base", base, "smollm2")]
        for m in methods:
            name = m if m == "dpo" else m + (f"-kl{args.kl_target:g}" if args.kl_target is not None else "") \
                + (f"-b{args.kl_coef:g}" if args.kl_coef != 0.05 else "")
            out = out_root / name
            t0 = time.monotonic()
            if m == "dpo":
                ft = finetune("smollm2", str(prefs), out, time_budget=args.budget, lr=args.dpo_lr, beta=0.1,
                              eval_interval=50, log=_err, **COMMON)
            else:
                ft = finetune("smollm2", str(prompts), out, reward=str(rm.path), heldout_reward=str(rm_held.path),
                              algorithm=m, time_budget=args.budget, lr=args.rl_lr, kl_coef=args.kl_coef, samples=4,
                              kl_target=args.kl_target, max_new_tokens=48, eval_interval=20, log=_err, **COMMON)
            _err(f"{name}: trained in {time.monotonic() - t0:.0f} s")
            rows.append(row(name, load_finetuned(out, log=lambda *a: None), str(out), ft.summary))
    what = ("Guardrails (keeping level 1's secret, answering ordinary requests)" if guard
            else "Tone (KJV register over SmolLM2's own reply)")
    print(f"\n{what}: LoRA, {args.budget:g} s of training per method; "
          f"{len(held)} held-out prompts, one sampled reply each (T = 1); reward models: held-out pair accuracy "
          f"{rm.config['val_accuracy']:.2f} (train half), {rm_held.config['val_accuracy']:.2f} (other half)\n")
    extra = " | leaks at level 1 (full + partial) of the attack suite |" if guard else " |"
    print("| method | steps | s/step | win vs base, training RM [95% CI] | win vs base, held-out RM [95% CI] "
          "| KL to base (nats/reply) | reply tokens | benign answered | benign relevance | benign distinct-2"
          + extra)
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if guard else ""))
    for r in rows:
        lo, hi = r["win_train_ci"]
        lo2, hi2 = r["win_heldout_ci"]
        steps = r.get("steps", "—")
        sps = f"{r['s_per_step']:.1f}" if "s_per_step" in r else "—"
        cells = (f"| {r['method']} | {steps} | {sps} | {r['win_train']:.2f} [{lo:.2f}, {hi:.2f}] | "
                 f"{r['win_heldout']:.2f} [{lo2:.2f}, {hi2:.2f}] | {r['kl']:.2f} | {r['reply_tokens']:.1f} | "
                 f"{r['utility']:.0%} | {_f(r.get('relevance'))} | {_f(r.get('distinct2'))} |")
        if guard:
            a = r["attack"]["1"]
            cells += f" {a['leaks']} + {a['partial']} of {a['attempts']} ({a['leaks'] / a['attempts']:.1%}) |"
        print(cells)
    if guard:
        b = rows[0]["attack"]
        print("\nThe untuned model behind the prompt-level guards (same secrets, same attacks):")
        for lv in ("2", "3", "4"):
            a = b[lv]
            print(f"  level {lv}: {a['leaks']} full leaks + {a['partial']} partial of {a['attempts']} "
                  f"({a['leaks'] / a['attempts']:.1%})")
        for r in rows:
            print(f"  {r['method']}, level 1, worst attacks: "
                  + ", ".join(f"{n} {x:.0%}" for x, n in r["attack"]["1"]["worst"]))
    print()
    for r in rows:
        print(f"{r['method']}: {r['example']['prompt']!r} -> {r['example']['reply']!r}")
    for i in (0, 1):   # the same two ordinary requests, each method's greedy reply
        for r in rows:
            if "benign_replies" in r:
                e = r["benign_replies"][i]
                print(f"{r['method']}, benign: {e['request']!r} -> {e['reply']!r}")
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "results.json").write_text(json.dumps({"demo": args.demo, "budget": args.budget, "rows": rows},
                                                      indent=2, default=str))


if __name__ == "__main__":
    main()
