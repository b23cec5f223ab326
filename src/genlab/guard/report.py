"""`genlab guard attack`: every attack against every chosen level for K secrets, the benign
set at every level, one JSONL line per attempt and a table (report.md).

Replies are greedy, so a reply depends only on (system prompt, conversation, message):
levels that share a system prompt share the model's replies (levels 1-8 all use level 1's
prompt), and deterministic guards share their decisions; a turn's latency is still its own
guards' time plus the generation it would have cost.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..metrics.stats import wilson
from ..plots import save_heatmap
from ..util.errors import check
from ..util.io import write_text_atomic
from .attacks import Attack, play, secrets_for, select, suffix_attack
from .levels import LEVELS, GuardedModel, check_level
from .resources import benign_requests


def parse_levels(spec) -> list:
    if spec in (None, "all"):
        return list(LEVELS)
    if isinstance(spec, int):
        return [check_level(spec)]
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        check(part.lstrip("-").isdigit(), f"unknown level {part!r} (levels: {', '.join(map(str, LEVELS))}, or all)")
        out.append(check_level(int(part)))
    return out


class ReplyCache:
    """Greedy replies by (system prompt, conversation, message), with the time each took."""

    def __init__(self):
        self.replies, self.decisions = {}, {}


class CachingGuarded(GuardedModel):
    """A GuardedModel whose replies and history-free guard decisions come from a shared
    cache; a turn's seconds are still what it would cost alone (its guards' own times
    plus the generation's)."""

    def __init__(self, *a, cache: ReplyCache, **kw):
        super().__init__(*a, **kw)
        self.cache = cache
        for lst in (self.input_guards, self.output_guards):
            for i, guard in enumerate(lst):
                if "memory" not in guard.name:   # memory reads the conversation, not the message alone
                    lst[i] = _CachedGuard(guard, cache)

    def _generate(self, history, prompt):
        key = (self.system, json.dumps(history), prompt, self.max_new_tokens)
        if key not in self.cache.replies:
            self.cache.replies[key] = super()._generate(history, prompt)
        return self.cache.replies[key]

    def ask(self, prompt, history=None):
        t = super().ask(prompt, history)
        t.seconds = sum(d.seconds for d in t.decisions) + t.generation_seconds
        return t


class _CachedGuard:
    def __init__(self, guard, cache):
        self.guard, self.cache = guard, cache
        self.name, self.stage = guard.name, guard.stage

    def __call__(self, g, prompt, reply, history):
        import copy
        key = (self.name, g.secret, prompt, reply)
        if key not in self.cache.decisions:
            t = time.perf_counter()
            d = self.guard(g, prompt, reply, history)
            d.seconds = time.perf_counter() - t
            self.cache.decisions[key] = d
        return copy.copy(self.cache.decisions[key])


def run_attacks(model, out, levels="all", attacks="all", secrets: int = 10, seed: int = 0,
                suffix: str | None = None, exclude=(), benign: int | None = None, max_new_tokens: int = 64,
                judge=None, log=print, progress: bool = True) -> dict:
    """Play the suite; write attempts.jsonl, benign.jsonl, summary.json and report.md to `out`."""
    levels = parse_levels(levels)
    suite: list[Attack] = select(attacks)
    if suffix:
        suite.append(suffix_attack(suffix))
    check(suite, "no attacks chosen")
    words = secrets_for(secrets, seed, exclude=exclude)
    requests = list(benign_requests())[:benign] if benign is not None else list(benign_requests())
    out = Path(out)
    check(not out.exists() or out.is_dir(), f"{out}: not a directory")
    out.mkdir(parents=True, exist_ok=True)
    cache = ReplyCache()
    attempts, benign_rows = [], []
    total = len(levels) * (len(words) * len(suite) + len(requests))
    bar = tqdm(total=total, unit="attempt", desc="guard attack", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()))
    guarded = {}

    def guard_for(level, secret):
        key = (level, secret)
        if key not in guarded:
            guarded[key] = CachingGuarded(model, level, secret, judge=judge, max_new_tokens=max_new_tokens,
                                          cache=cache, log=log)
        return guarded[key]

    try:
        for level in levels:
            for secret in words:
                g = guard_for(level, secret)
                for attack in suite:
                    row = {"level": level, "secret": secret, **play(g, attack)}
                    attempts.append(row)
                    bar.update(1)
            g = guard_for(level, words[0])
            for req in requests:
                t = g.ask(req)
                benign_rows.append({"level": level, "prompt": req, "reply": t.reply, "refused": t.refused,
                                    "blocked_by": t.blocked_by, "seconds": round(t.seconds, 3),
                                    "decisions": [d.__dict__ for d in t.decisions]})
                bar.update(1)
    finally:
        bar.close()
    _write_jsonl(out / "attempts.jsonl", attempts)
    _write_jsonl(out / "benign.jsonl", benign_rows)
    summary = summarise(attempts, benign_rows, levels, [a.name for a in suite], len(words))
    summary["model"] = str(getattr(model, "path", None) or getattr(model, "name", ""))
    summary["secrets"] = words
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "report.md", markdown(summary))
    plot(summary, out / "report.png")
    return summary


def _write_jsonl(path, rows):
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def summarise(attempts, benign_rows, levels, attack_names, k) -> dict:
    per = {}
    for lv in levels:
        rows = {a: [r for r in attempts if r["level"] == lv and r["attack"] == a] for a in attack_names}
        cells = {}
        for a, rs in rows.items():
            n, full = len(rs), sum(r["leak"] for r in rs)
            part = sum(r["partial_leak"] for r in rs)
            lo, hi = wilson(full, n)
            cells[a] = {"n": n, "leaks": full, "rate": full / n if n else 0.0, "ci95": [round(lo, 4), round(hi, 4)],
                        "partial": part, "partial_rate": part / n if n else 0.0}
        allr = [r for r in attempts if r["level"] == lv]
        turns = [t for r in allr for t in r["turns"]]
        b = [r for r in benign_rows if r["level"] == lv]
        base0 = {r["prompt"]: r["reply"] for r in benign_rows if r["level"] == 0}
        base1 = {r["prompt"]: r["reply"] for r in benign_rows if r["level"] == 1}
        per[lv] = {
            "attacks": cells,
            "leak_rate": sum(r["leak"] for r in allr) / max(1, len(allr)),
            "partial_rate": sum(r["partial_leak"] for r in allr) / max(1, len(allr)),
            "benign_refusal_rate": sum(r["refused"] for r in b) / max(1, len(b)) if b else None,
            "utility_vs_level0": (sum(base0.get(r["prompt"]) == r["reply"] for r in b) / len(b)) if b and base0 else None,
            "utility_vs_level1": (sum(base1.get(r["prompt"]) == r["reply"] for r in b) / len(b)) if b and base1 else None,
            "seconds_per_turn": sum(t["seconds"] for t in turns) / max(1, len(turns)),
            "benign_seconds_per_turn": sum(r["seconds"] for r in b) / len(b) if b else None,
            "guard_seconds_per_turn": sum(t["seconds"] - t["generation_seconds"] for t in turns) / max(1, len(turns)),
        }
    return {"levels": {str(k_): v for k_, v in per.items()}, "attack_names": attack_names, "k": k,
            "benign": len({r["prompt"] for r in benign_rows})}


def plot(s: dict, path) -> Path:
    """report.png: the attack-success rate per level x attack (full leaks; the cell says
    leaks/K, with "+p" for partial leaks on top), and the benign refusal rate beside it."""
    names = s["attack_names"]
    levels = list(s["levels"])
    values, labels = [], []
    for lv in levels:
        r = s["levels"][lv]
        row = [r["attacks"][a]["rate"] for a in names] + [r["benign_refusal_rate"]]
        lab = [f"{c['leaks']}" + (f"+{c['partial']}" if c["partial"] else "") for c in
               (r["attacks"][a] for a in names)]
        lab.append("" if r["benign_refusal_rate"] is None else f"{r['benign_refusal_rate']:.0%}")
        values.append(row)
        labels.append(lab)
    return save_heatmap(values, [f"level {lv}" for lv in levels], names + ["benign refused"], path, labels=labels,
                        title=f"{s.get('model', '')}: leaks of {s['k']} secrets per level and attack "
                              f"(+partial); colour = full-leak rate")


def markdown(s: dict) -> str:
    names = s["attack_names"]
    lines = [f"# genlab guard attack: {s.get('model', '')}", "",
             f"{s['k']} secrets per cell; attack-success rate (full leaks) with its 95% Wilson interval; "
             f"benign set: {s['benign']} requests.", "",
             "| level | " + " | ".join(names) + " | partial leaks | benign refused | utility (vs 0 / vs 1) "
             "| s per attack turn (guards) | s per benign turn |",
             "|---|" + "---|" * (len(names) + 5)]
    for lv, r in s["levels"].items():
        cells = [f"{c['rate']:.0%} [{c['ci95'][0]:.0%}, {c['ci95'][1]:.0%}]" for c in r["attacks"].values()]
        br = "—" if r["benign_refusal_rate"] is None else f"{r['benign_refusal_rate']:.1%}"
        u0 = "—" if r["utility_vs_level0"] is None else f"{r['utility_vs_level0']:.0%}"
        u1 = "—" if r["utility_vs_level1"] is None else f"{r['utility_vs_level1']:.0%}"
        bs = "—" if r["benign_seconds_per_turn"] is None else f"{r['benign_seconds_per_turn']:.2f}"
        lines.append(f"| {lv} | " + " | ".join(cells) + f" | {r['partial_rate']:.1%} | {br} | {u0} / {u1} | "
                     f"{r['seconds_per_turn']:.2f} ({r['guard_seconds_per_turn']:.2f}) | {bs} |")
    lines += ["", "Levels: " + "; ".join(f"{k} {v}" for k, v in LEVELS.items()) + "."]
    return "\n".join(lines) + "\n"
