"""RLHF's RL step (train/rlhf.py, `genlab finetune --reward RUN`): RLOO's advantages, GAE
and the adaptive KL controller by hand; on a small char-level GPT taught two ways of answering, RL
against a reward model that prefers one of them makes the model answer that way (the
reward model's score of fresh samples rises); sampled reply ids end where the reply does;
bit-exact resume with an adapting KL coefficient; bad input as one line, nothing written."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import genlab
from conftest import _assert_same_weights, _expect_user_error
from genlab.api import finetune
from genlab.families.reward import RewardModel, train_reward
from genlab.llm.sample import sample_responses
from genlab.train.rlhf import AdaptiveKL, gae, rloo_advantages
from genlab.util.errors import GenlabError

quiet = dict(log=lambda *a: None)
TINY = dict(recipe="nanogpt", n_layer=2, n_head=2, n_embd=64, block_size=128, batch_size=16,
            lr=5e-3, warmup_iters=20, eval_interval=100, log_interval=25)
FT = dict(progress=False, block_size=128, eval_examples=16, **quiet)
WORDS = ("the sea,the king,bread,wine,fire,gold,a river,the moon,a tree,the wind,rain,a stone,the field,"
         "the night,the sun,a star,the earth,war,peace,love,a horse,the crown,a sword,the queen,a ship,"
         "the hill,a rose,the sky,a lamb,the town").split(",")
PROMPTS = [f"Speak of {w}." for w in WORDS]


def thou(w):
    return f"Thou speakest of {w}, and I hear thee."


def you(w):
    return f"You talk about {w} and I listen to you."


# -- the pieces, by hand ------------------------------------------------------------------------

def test_rloo_advantage_is_the_return_minus_the_mean_of_the_others():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    a = rloo_advantages(r)
    assert torch.allclose(a[0], torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3]))
    assert torch.equal(a[1], torch.zeros(4))                # all replies equal: nothing to learn
    assert torch.allclose(a.sum(1), torch.zeros(2), atol=1e-6)
    with pytest.raises(GenlabError, match="at least 2"):
        rloo_advantages(torch.ones(3, 1))


def test_gae_by_hand_over_replies_that_end_and_start_at_different_places():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [5.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0], [3.0, 0.5, 0.5]])
    keep = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    adv, ret = gae(rewards, values, keep, gamma=1.0, lam=0.5)
    # row 0: delta = (0, 0, 0.5); A_2 = 0.5, A_1 = 0 + 0.5 A_2, A_0 = 0 + 0.5 A_1
    assert torch.allclose(adv[0], torch.tensor([0.125, 0.25, 0.5]))
    assert torch.allclose(ret[0], torch.tensor([0.625, 0.75, 1.0]))
    # row 1 ends after two tokens: V after the end is 0, not the padding's 9
    assert torch.allclose(adv[1], torch.tensor([0.5, 1.0, 0.0])) and torch.allclose(ret[1], torch.tensor([1.5, 2.0, 0]))
    # row 2 starts one later: the prompt position's reward and value play no part
    assert torch.allclose(adv[2], torch.tensor([0.0, 0.25, 0.5]))
    a1, _ = gae(rewards[:1], values[:1], keep[:1], gamma=1.0, lam=1.0)   # lambda 1: return - V
    assert torch.allclose(a1, torch.tensor([[0.5, 0.5, 0.5]]))


def test_adaptive_kl_moves_towards_its_target_by_at_most_a_fifth_per_horizon():
    fixed = AdaptiveKL(0.1)
    fixed.update(50.0, 1000)
    assert fixed.coef == 0.1
    up, down = AdaptiveKL(0.1, target=2.0, horizon=100), AdaptiveKL(0.1, target=2.0, horizon=100)
    up.update(20.0, 10)                                     # 10x the target: clipped to +20%, x 10/100
    down.update(1.0, 10)                                    # half the target: -50% clipped to -20%
    assert up.coef == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert down.coef == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    # the default horizon acts within a CPU run: 40 steps of 8 replies at KL 39 against a
    # target of 15 (the tone benchmark's first 900 s) raise the coefficient 2.7-fold
    # (Ziegler's 10,000 replies: by 0.6%)
    ours, ziegler = AdaptiveKL(0.05, target=15.0), AdaptiveKL(0.05, target=15.0, horizon=10_000)
    for _ in range(40):
        ours.update(39.0, 8)
        ziegler.update(39.0, 8)
    assert ours.coef > 2.5 * 0.05 and ziegler.coef < 1.01 * 0.05


# -- a policy with two ways of answering, a reward model that prefers one -----------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(SFT run, reward-model run, prompts file): a char GPT trained on Shakespeare, then
    taught to answer "Speak of X." both ways (a third of its samples start "Thou"), and a
    Bradley-Terry reward model that prefers the "Thou" way."""
    d = tmp_path_factory.mktemp("rlhf")
    genlab.train("lm", corpus="shakespeare", out=d / "base", max_iters=300, progress=False, **quiet, **TINY)
    rows = [json.dumps({"prompt": p, "response": f(w)}) for p, w in zip(PROMPTS, WORDS) for f in (thou, you)]
    (d / "sft.jsonl").write_text("\n".join(rows) + "\n")
    finetune(str(d / "base"), str(d / "sft.jsonl"), d / "sft", method="full", max_iters=100, lr=1e-3,
             eval_interval=50, log_interval=50, **FT)
    prefs = [json.dumps({"prompt": p, "chosen": thou(w), "rejected": you(w)}) for p, w in zip(PROMPTS, WORDS)]
    (d / "prefs.jsonl").write_text("\n".join(prefs) + "\n")
    train_reward(d / "prefs.jsonl", d / "rm", **quiet)
    train_reward(d / "prefs.jsonl", d / "rm-half2", half=2, **quiet)
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return d / "sft", d / "rm", d / "prompts.txt"


def _style_and_reward(run, rm, held):
    """Share of replies that start "Thou", and the training and the held-out reward models'
    mean scores, over two sampled replies to each of the 30 prompts (a fixed seed)."""
    model = genlab.load_model(str(run), **quiet)
    prompts = PROMPTS * 2
    texts, _ = sample_responses(model, prompts, max_new_tokens=48, seed=0, batch=30)
    return (sum(t.startswith("Thou") for t in texts) / len(texts), float(rm.score(prompts, texts).mean()),
            float(held.score(prompts, texts).mean()), texts[:4])


@pytest.mark.parametrize("algorithm", ["rloo", "ppo"])
def test_rl_against_the_reward_model_makes_the_preferred_answer_the_usual_one(setup, tmp_path, algorithm):
    sft, rm_path, prompts = setup
    held = rm_path.parent / "rm-half2"
    rl = finetune(str(sft), str(prompts), tmp_path / "rl", reward=str(rm_path), heldout_reward=str(held),
                  algorithm=algorithm, method="lora", max_iters=30,
                  lr=5e-3, eval_interval=15, log_interval=5, max_new_tokens=48, **FT)
    rm = RewardModel(rm_path)
    hm = RewardModel(held, embedder=rm.embed)
    style0, reward0, held0, _ = _style_and_reward(sft, rm, hm)
    style1, reward1, held1, examples = _style_and_reward(tmp_path / "rl", rm, hm)
    print(f"{algorithm}: 'Thou' share {style0:.2f} -> {style1:.2f}, reward {reward0:.2f} -> {reward1:.2f}, "
          f"held-out reward {held0:.2f} -> {held1:.2f}; {examples}")
    # (measured: RLOO 0.32 -> 0.65, 2.08 -> 4.50; PPO 0.32 -> 0.47, 2.08 -> 4.76)
    assert reward1 >= reward0 + 1.0, (reward0, reward1)
    assert held1 >= held0 + 0.5, (held0, held1)            # the gain is not this reward model's alone
    assert style1 >= style0 + 0.1, (style0, style1)
    recs = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    its = [r for r in recs if r["kind"] == "iter"]
    assert {"reward", "kl", "entropy", "reply_tokens", "kl_coef"} <= set(its[0])
    assert its[0]["kl"] == pytest.approx(0.0, abs=1e-4)    # the first step samples the reference itself
    assert all(r["kl"] > 0 for r in its[2:])               # the policy moved away from it ...
    assert its[-1]["reply_tokens"] < 48                    # ... and its replies end
    vals = [r for r in recs if r["kind"] == "val"]
    assert {"val_reward", "val_kl", "example", "val_heldout_reward"} <= set(vals[0])
    cfg = json.loads((tmp_path / "rl" / "config.json").read_text())
    assert cfg["data"]["objective"] == "rlhf" and cfg["data"]["reward"] == str(rm_path.resolve())
    assert cfg["train"]["algorithm"] == algorithm
    assert cfg["data"]["heldout_reward"] == str(held.resolve())
    assert rl.summary["best_val_loss"] == min(r["val_loss"] for r in vals)


def test_reward_model_halves_share_no_pair_and_agree(setup):
    _, rm_path, _ = setup
    half = RewardModel(rm_path.parent / "rm-half2")
    assert half.config["data"]["pairs"] == 15 and half.config["data"]["half"] == 2
    s = half.score(["Speak of the tide."] * 2, [thou("the tide"), you("the tide")])   # a word in neither half
    assert s[0] > s[1]


def test_sampled_reply_ids_end_with_the_stop_string(setup):
    sft, _, _ = setup
    model = genlab.load_model(str(sft), **quiet)
    stop = model.template.stop
    texts, seqs = sample_responses(model, PROMPTS[:12], max_new_tokens=60, seed=3, batch=12)
    ended = [(t, r) for t, (_, r) in zip(texts, seqs) if len(r) < 60]
    assert len(ended) >= 9                                  # SFT taught it to stop
    for text, reply in ended:
        decoded = model.decode(reply)
        assert decoded.endswith(stop) and decoded.count(stop) == 1
        assert decoded[:-len(stop)].strip() == text


@pytest.mark.parametrize("algorithm", ["rloo", "ppo"])
def test_rl_resume_is_bit_exact_with_an_adapting_kl_coefficient(setup, tmp_path, algorithm):
    sft, rm_path, prompts = setup
    kw = dict(reward=str(rm_path), algorithm=algorithm, method="lora", lr=5e-3, schedule="constant", kl_target=1.0,
              eval_interval=3, log_interval=1, max_new_tokens=32, **FT)
    finetune(str(sft), str(prompts), tmp_path / "a", max_iters=6, **kw)
    finetune(str(sft), str(prompts), tmp_path / "b", max_iters=3, **kw)
    finetune(str(sft), str(prompts), tmp_path / "b", resume=True, max_iters=6, progress=False, **quiet)
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("a", "b"))
    _assert_same_weights(a, b)

    def log(run):
        return [{k: v for k, v in json.loads(x).items() if k not in ("elapsed", "steps_per_s")}  # timings
                for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert log("a") == log("b")
    coefs = [r["kl_coef"] for r in log("a") if r["kind"] == "iter"]
    assert len(set(coefs)) > 1                               # the controller moved it, and the resume kept it
    if algorithm == "ppo":                                   # (and the value head, in state.pt)
        assert all(r["value_loss"] > 0 for r in log("a") if r["kind"] == "iter")


@pytest.mark.parametrize("algorithm", ["rloo", pytest.param("ppo", marks=pytest.mark.slow)])
def test_rl_in_two_processes_trains_and_resumes_bit_exactly(setup, tmp_path, algorithm):
    """RLHF under torchrun: each process samples its half of the prompts, DDP averages the
    policy's (and PPO's value head's) gradients; a resume under 2 processes is bit-exact."""
    sft, rm_path, prompts = setup
    kw = dict(reward=str(rm_path), algorithm=algorithm, method="lora", lr=5e-3, schedule="constant", kl_target=1.0,
              eval_interval=3, log_interval=1, max_new_tokens=32, nproc=2, **FT)
    finetune(str(sft), str(prompts), tmp_path / "a", max_iters=6, **kw)
    finetune(str(sft), str(prompts), tmp_path / "b", max_iters=3, **kw)
    finetune(str(sft), str(prompts), tmp_path / "b", resume=True, max_iters=6, nproc=2, progress=False, **quiet)
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("a", "b"))
    _assert_same_weights(a, b)
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "iter"]
    assert [r["iter"] for r in steps] == [1, 2, 3, 4, 5, 6] and all(r["world_size"] == 2 for r in steps)
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["reward"]) for r in steps)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["world_size"] == 2


def test_rl_bad_inputs_are_one_line_and_write_nothing(setup, tmp_path, cli_here):
    sft, rm_path, prompts = setup
    out = tmp_path / "out"
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--samples", 8, "--out", out),
                       "--samples", "--reward")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--heldout-reward", rm_path, "--out", out),
                       "--heldout-reward", "--reward")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--reward", sft, "--out", out), "reward model")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--reward", rm_path, "--heldout-reward", rm_path,
                                "--out", out), "other rankings")
    _expect_user_error(cli_here("reward", "train", "--data", prompts, "--half", 3, "--out", out), "half")
    one = tmp_path / "one.txt"
    one.write_text("Speak of the sea.\n\n")
    _expect_user_error(cli_here("finetune", sft, "--data", one, "--reward", rm_path, "--out", out),
                       "at least 2 prompts")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _expect_user_error(cli_here("finetune", sft, "--data", empty, "--reward", rm_path, "--out", out),
                       "empty.txt", "found 0")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--reward", rm_path, "--kl-coef", -0.1,
                                "--out", out), "--kl-coef")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--reward", rm_path, "--kl-target", 0,
                                "--out", out), "--kl-target")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Speak of the sea."}\n{"prompt": 3}\n{"prompt": "Speak of wine."}\n')
    _expect_user_error(cli_here("finetune", sft, "--data", bad, "--reward", rm_path, "--out", out),
                       "bad.jsonl:2", "--on-error skip")
    long = tmp_path / "long.txt"
    long.write_text("Speak of the sea.\n" + "Speak of " + "the sea and " * 10 + "wine.\n")
    _expect_user_error(cli_here("finetune", sft, "--data", long, "--reward", rm_path, "--out", out),
                       "does not fit", "--max-new-tokens")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--reward", rm_path, "--samples", 1,
                                "--out", out), "--samples", "at least 2")
    _expect_user_error(cli_here("finetune", sft, "--data", prompts, "--reward", rm_path, "--algorithm", "dqn",
                                "--out", out), "dqn", "ppo")
    assert not out.exists()
    assert Path(prompts).read_text().count("\n") == len(PROMPTS)


# -- guardrails: prompts under a system prompt, rankings that prefer keeping the secret ------------

def test_prompts_carry_their_system_prompt_and_guard_rankings_keep_the_evaluation_out(setup, tmp_path, cli_here,
                                                                                      expect_user_error):
    from genlab.guard.attacks import ATTACKS, secrets_for
    from genlab.guard.decoders import DECODERS, Disclosure
    from genlab.guard.rankings import REFUSALS
    from genlab.guard.resources import benign_requests
    from genlab.llm.data import read_jsonl, read_prompts
    from genlab.llm.sample import chat_prompt
    sft, _, _ = setup
    model = genlab.load_model(str(sft), **quiet)
    expect_user_error(cli_here("guard", "rankings", str(sft), "--out", tmp_path / "g"),
                      "do not fit the model's context of 128 tokens")    # level 1's system prompt is longer
    assert not (tmp_path / "g").exists()
    genlab.train("lm", corpus="shakespeare", out=tmp_path / "gpt", tokenizer="bpe", vocab_size=300, max_iters=60,
                 n_layer=2, n_head=2, n_embd=32, block_size=256, batch_size=16, progress=False, **quiet)
    chat = genlab.api.export(str(tmp_path / "gpt"), tmp_path / "gpt-hf", **quiet)    # a Hugging Face chat model
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"system": "Be brief.", "prompt": "Speak of the sea."}) + "\n"
                 + json.dumps({"prompt": "Speak of wine."}) + "\n")
    ps = read_prompts(f)
    assert ps == ["Speak of the sea.", "Speak of wine."] and (ps[0].system, ps[1].system) == ("Be brief.", None)
    assert "Be brief." in chat_prompt(model, ps[0]) and "Be brief." not in chat_prompt(model, ps[1])

    counts = genlab.api.guard_rankings(str(chat), tmp_path / "g", per_message=1, max_new_tokens=16, **quiet)
    kind, pairs = read_jsonl(tmp_path / "g" / "prefs.jsonl")
    assert kind == "dpo" and len(pairs) == counts["pairs"] and all("system" in p for p in pairs)
    raw = [json.loads(x) for x in (tmp_path / "g" / "prefs.jsonl").read_text().splitlines()]
    evaluation = set(secrets_for(20, 0))
    suite = {t for a in ATTACKS for t in a.turns}
    for p in raw:
        assert p["secret"] not in evaluation and p["secret"] in p["system"]
        assert p["prompt"] not in suite and p["prompt"] not in benign_requests()
        if p["kind"] == "attack":     # the leak is ranked below, whoever wrote it
            assert Disclosure(p["secret"], tuple(DECODERS)).add(p["rejected"]).partial
            assert not Disclosure(p["secret"], tuple(DECODERS)).add(p["chosen"]).partial
        else:
            assert p["rejected"] in REFUSALS
    assert counts["attack_resisted"] + counts["attack_leaked"] == 114 and counts["ordinary"] >= 100
    rl = read_prompts(tmp_path / "g" / "prompts.jsonl")
    assert len(rl) == 243 and all(p.system and "secret password is" in p.system for p in rl)
    rm = train_reward(tmp_path / "g" / "prefs.jsonl", tmp_path / "rm", **quiet)
    assert rm.config["val_accuracy"] >= 0.8                     # the rankings are learnable
    expect_user_error(cli_here("guard", "rankings", str(chat), "--out", tmp_path / "g"), "already holds rankings")
    expect_user_error(cli_here("guard", "rankings", str(chat), "--out", tmp_path / "h", "--per-message", "0"),
                      "--per-message")
    assert not (tmp_path / "h").exists()
