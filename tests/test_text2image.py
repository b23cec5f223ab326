"""Text conditioning: captions of real data say what the images show, caption embeddings
round-trip through their cache, the lecture-style VAE's encoder really does not see the
text, short trainings on MNIST follow prompts they never saw far above chance, a
text-conditioned GAN resumes bit for bit, and every bad input is one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import genlab
from conftest import captioned_digits
from genlab.data import load_images
from genlab.data.captions import HELD_OUT, TEMPLATES, class_thresholds, measure, prompt_info, prompt_set
from genlab.encoders import text as text_enc
from genlab.models.vae import VAEConfig, build_vae

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_mnist_captions_name_the_class_and_the_measured_attributes(mnist):
    caps = mnist.captions("train")
    assert len(caps) == len(mnist.train_x) and len(mnist.captions("test")) == len(mnist.test_x)
    y = mnist.train_y.numpy()
    for i in range(0, 60_000, 997):                      # every caption reads back as the image's digit
        for c in caps[i]:
            assert prompt_info(c, "mnist")["class"] == y[i], c
    # "thick" / "thin" are the top / bottom third of the class's ink mass
    ink = measure(mnist.train_x)["thickness"]
    t = class_thresholds({"thickness": ink}, y, 10)["thickness"]
    thick = [i for i in range(5000) if any(" thick " in f" {c} " for c in caps[i])]
    thin = [i for i in range(5000) if any(" thin " in f" {c} " for c in caps[i])]
    assert len(thick) > 1000 and len(thin) > 1000
    assert all(ink[i] > t[y[i]][1] for i in thick) and all(ink[i] <= t[y[i]][0] for i in thin)
    # the held-out phrasings never occur in training
    seen = {c for cs in caps for c in cs}
    held = prompt_set("mnist", "heldout")
    assert held and not seen & set(held)
    assert set(prompt_set("mnist", "train")) <= seen
    assert all(prompt_info(p, "mnist")["class"] is not None for p in held)
    assert len(HELD_OUT["mnist"]) == len(TEMPLATES["mnist"]["heldout"]) + 1


def test_fashion_synonyms_and_the_longest_name_wins():
    assert prompt_info("a t-shirt", "fashion-mnist")["class"] == 0
    assert prompt_info("a shirt", "fashion-mnist")["class"] == 6
    assert prompt_info("a pair of pants", "fashion-mnist")["class"] == 1
    assert prompt_info("a large ankle boot", "fashion-mnist") == {"class": 9, "size": 1}
    assert prompt_info("a one and a seven", "mnist")["class"] is None


def test_caption_embeddings_round_trip_through_the_cache(tmp_path, monkeypatch):
    texts = ["a handwritten seven", "the digit 7", "a thick, slanted seven"]
    store = text_enc.EmbeddingStore(tmp_path)
    first = store.embed(texts)
    assert first.shape == (3, 384)
    assert torch.allclose(first.norm(dim=1), torch.ones(3), atol=1e-5)
    assert store.path(texts).is_file()

    def boom(*a, **k):
        raise AssertionError("MiniLM ran although the cache holds the embeddings")
    monkeypatch.setattr(text_enc, "minilm", boom)
    assert torch.equal(store.embed(texts), first)          # from the file, bit for bit
    monkeypatch.undo()
    store.path(texts).write_bytes(b"damaged")
    assert torch.allclose(store.embed(texts), first, atol=1e-6)   # re-embedded, not crashed


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_lecture_style_encoder_does_not_receive_the_text(mnist, arch):
    x = mnist.to_float(mnist.train_x[:8])
    e = text_enc.minilm()(["a thin one", "a thick, slanted eight"])
    c1, c2 = e[:1].expand(8, -1), e[1:].expand(8, -1)
    torch.manual_seed(0)
    lecture = build_vae(VAEConfig(arch=arch, text_dim=384))
    torch.manual_seed(0)
    standard = build_vae(VAEConfig(arch=arch, text_dim=384, encoder_condition=True))
    with torch.no_grad():
        for a, b in zip(lecture.encode(x, c1), lecture.encode(x, c2)):
            assert torch.equal(a, b)                           # q(z|x): the caption changes nothing
        assert not torch.equal(standard.encode(x, c1)[0], standard.encode(x, c2)[0])   # q(z|x, c)
        z = torch.zeros(8, lecture.cfg.latent_dim)
        assert not torch.equal(lecture.decode(z, c1), lecture.decode(z, c2))           # the decoder does


def test_a_short_text_conditioned_vae_follows_held_out_prompts(tmp_path, classifier):
    run = genlab.train("vae", dataset="mnist", condition="text", cvae="standard", time_budget=10, seed=0,
                       out=tmp_path / "tv", progress=False, log=lambda m: None)
    assert run.config["condition"] == {"kind": "text", "encoder": "minilm", "dim": 384}
    res = run.evaluate_prompts("heldout", per_prompt=20, seed=0)
    acc = res["conditional_accuracy[genlab-mnist]"]
    assert acc > 0.5, res                                       # chance: 0.1
    assert res["prompts"] == 100 and res["rho_slant"] > 0.3, res
    sevens = run.sample(32, seed=0, prompt="a picture of the number seven")
    assert (classifier.probs(sevens).argmax(-1) == 7).float().mean() > 0.6
    logged = [json.loads(line) for line in (tmp_path / "tv" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["kind"] == "eval_prompts"
    walk = run.prompt_walk(["a one", "a seven"], pairs=2, steps=5)
    assert walk.shape == (10, 1, 28, 28)
    ends = classifier.probs(walk.view(2, 5, 1, 28, 28)[:, [0, -1]].reshape(4, 1, 28, 28)).argmax(-1)
    assert ends.tolist().count(1) >= 1 and ends.tolist().count(7) >= 1


@pytest.mark.slow
def test_a_short_text_conditioned_gan_follows_prompts(tmp_path, classifier):
    run = genlab.train("gan", dataset="mnist", condition="text", time_budget=15, seed=0, out=tmp_path / "tg",
                       progress=False, log=lambda m: None)
    res = run.evaluate_prompts("heldout", per_prompt=10, seed=0)
    assert res["conditional_accuracy[genlab-mnist]"] > 0.3, res     # chance: 0.1


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory, mnist):
    """160 real digits as PNGs in one folder (no class sub-folders) with captions.txt."""
    return captioned_digits(tmp_path_factory.mktemp("captioned"), mnist)


def test_folder_captions_are_read_and_bad_lines_named(captioned_folder, tmp_path):
    data = load_images(f"folder:{captioned_folder}")
    caps = data.captions("train") + data.captions("test")
    assert len(caps) == 160 and all(len(c) == 2 for c in caps)
    # the Hugging Face convention, and its mistakes, line by line
    root = tmp_path / "hf"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / f"{i}.png")
    meta = root / "metadata.jsonl"
    meta.write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"grey {i}"}) + "\n" for i in range(3)))
    assert sorted(c[0] for c in load_images(f"folder:{root}").captions("train") +
                  load_images(f"folder:{root}").captions("test")) == ["grey 0", "grey 1", "grey 2"]
    for bad, says in [('{"file_name": "0.png", "text": "x"}\nnot json\n', "metadata.jsonl:2: not a JSON"),
                      ('{"file_name": "9.png", "text": "x"}\n', "metadata.jsonl:1: names 9.png, which is not"),
                      ('{"file_name": "0.png", "text": ""}\n', "metadata.jsonl:1: \"text\" must be"),
                      ('{"file_name": "0.png", "text": "x"}\n', "2 image(s) have no caption")]:
        meta.write_text(bad)
        with pytest.raises(genlab.GenlabError) as e:
            load_images(f"folder:{root}")
        assert says in str(e.value), str(e.value)


def test_a_text_conditioned_gan_resumes_bit_for_bit(captioned_folder, tmp_path, assert_same_weights):
    """(Captions are drawn per step from the global RNG: a resumed run must draw the same ones.)"""
    lines: list[str] = []
    common = {"dataset": f"folder:{captioned_folder}", "condition": "text", "width": 8, "batch_size": 32, "seed": 3,
              "progress": False, "log": lines.append}
    genlab.train("gan", out=tmp_path / "full", epochs=2, **common)
    assert any("text-conditioned (minilm)" in m for m in lines), lines
    genlab.train("gan", out=tmp_path / "half", epochs=1, **common)
    genlab.train("gan", out=tmp_path / "half", epochs=2, resume=True, **common)
    assert_same_weights(tmp_path / "full", tmp_path / "half")


def test_mode_seeking_pairs_conditions_and_rewards_images_that_differ(captioned_folder):
    """MSGAN's term: the generator step draws each condition for two latents, and its
    penalty falls as the two images of a condition move apart (it stops the per-caption
    collapse of a text GAN; README, Text conditioning)."""
    from genlab.models.gan import GANConfig, build_gan
    from genlab.train.condition import make_conditioner
    from genlab.train.gan import GANTask
    data = load_images(f"folder:{captioned_folder}")
    cond = make_conditioner({"kind": "text", "encoder": "minilm"}, data)
    model = build_gan(GANConfig(arch="sngan", channels=1, image_size=28, width=8, text_dim=384))
    task = GANTask(model, data, loss="hinge", cond=cond, mode_seeking=0.5)
    torch.manual_seed(0)
    y = task._g_conditions(9, "cpu", cond.draw(9, "cpu")[0])
    assert torch.equal(y[:4], y[4:8]) and not torch.equal(y[:4], y[1:5])
    z = torch.randn(8, 100)
    img = torch.rand(8, 1, 28, 28)
    near = torch.cat([img[:4], img[:4] + 0.01])
    far = torch.cat([img[:4], img[:4] + 0.5])
    assert task._mode_seeking_term(far, z) < task._mode_seeking_term(near, z) / 10
    assert GANTask(model, data, loss="hinge", cond=cond)._mode_seeking_term(far, z) == 0.0


def test_conditioning_augmentation_samples_the_text_code_and_pulls_it_to_a_unit_normal(captioned_folder):
    """StackGAN's conditioning augmentation: in training G reads its text code drawn around
    the caption's mean (two calls, two images), in sampling the mean itself (a seed gives one
    image); its KL to N(0, I) joins G's loss and falls as G trains."""
    from genlab.models.gan import GANConfig, build_gan
    from genlab.train.condition import make_conditioner
    from genlab.train.gan import GANTask, to_signed
    data = load_images(f"folder:{captioned_folder}")
    cond = make_conditioner({"kind": "text", "encoder": "minilm"}, data)
    torch.manual_seed(0)
    model = build_gan(GANConfig(arch="sngan", channels=1, image_size=28, width=8, text_dim=384, cond_aug=True))
    G = model.G
    with torch.no_grad():
        G.text_proj[-1].weight.mul_(20)                      # start far from N(0, I)
    y = cond.draw(16, "cpu")[0]
    z = torch.randn(16, 100)
    G.eval()
    with torch.no_grad():
        assert torch.equal(G(z, y), G(z, y))
        mu, _ = G.text_code(y)
        assert torch.equal(G(z, y), G.net(z + mu))
    G.train()
    with torch.no_grad():
        assert not torch.allclose(G(z, y), G(z, y))
    assert G.cond_kl(torch.zeros(1, 384) + 1e-3) >= 0
    task = GANTask(model, data, loss="hinge", lr_g=1e-3, cond=cond, cond_aug=1.0)
    assert GANTask(build_gan(GANConfig(arch="sngan", width=8, text_dim=384)), data, cond=cond, cond_aug=1.0).cond_aug == 0
    x = to_signed(data.train_x[:32])
    idx = torch.arange(32)
    before = float(G.cond_kl(y).detach())
    for _ in range(30):
        task.train_step(x, idx)
    assert float(G.cond_kl(y).detach()) < 0.5 * before


def test_the_text_shift_has_the_latents_length_whatever_the_mlp_learns(captioned_folder):
    """text_norm (every new text GAN): G's text MLP output is scaled to length sqrt(z_dim),
    so however large its weights grow the caption cannot outweigh z (unscaled it reached
    14-23 against z's 10 and the text GAN gave less variety per caption)."""
    from genlab.models.gan import GANConfig, build_gan
    from genlab.train.condition import make_conditioner
    data = load_images(f"folder:{captioned_folder}")
    cond = make_conditioner({"kind": "text", "encoder": "minilm"}, data)
    y = cond.draw(16, "cpu")[0]
    z = torch.randn(16, 100)
    for norm in (True, False):
        torch.manual_seed(0)
        G = build_gan(GANConfig(arch="sngan", channels=1, image_size=28, width=8, text_dim=384, text_norm=norm)).G
        G.eval()
        with torch.no_grad():
            before = G(z, y)
            G.text_proj[-1].weight.mul_(20)
            G.text_proj[-1].bias.mul_(20)
            after = G(z, y)
            shift = G.text_proj(G.text(y))
        assert torch.allclose(before, after, atol=1e-5) == norm
        if norm:
            assert torch.allclose(G.net(z + F.normalize(shift, dim=1) * 10.0), after, atol=1e-5)


def test_the_matching_aware_share_weighs_mismatched_pairs_against_generated_images(captioned_folder):
    """--mismatch W: D's negatives are (1 - W) x the generated batch's term + W x the real
    images' with another image's caption (Reed et al.: W = 0.5); W = 0 never shows D a
    mismatched pair, and a pair whose 'other' caption names the same class does not count.
    The mismatched pairs reuse the real images' features: D's convolutions run once per
    real batch, and the logits are the ones a separate pass gives."""
    from genlab.models.gan import GANConfig, build_gan
    from genlab.train.condition import make_conditioner
    from genlab.train.gan import GANTask
    data = load_images(f"folder:{captioned_folder}")
    cond = make_conditioner({"kind": "text", "encoder": "minilm"}, data)
    model = build_gan(GANConfig(arch="sngan", channels=1, image_size=28, width=8, text_dim=384))
    torch.manual_seed(0)
    idx = torch.arange(8)
    c_real, key = cond.real(idx)
    out_fake = torch.randn(8, 1)
    logits = torch.linspace(-0.5, 2.0, 8).unsqueeze(1)
    fake = torch.relu(1 + out_fake).mean()
    c_mis, w = cond.mismatch(c_real, key)
    assert torch.equal(c_mis, c_real.roll(1, 0))
    w = w.clone()
    w[3] = 0.0                                   # a pair whose other caption says the same: left out
    mis = float((torch.relu(1 + logits).flatten() * w).sum() / w.sum())
    for m, expect in ((0.5, 0.5 * fake + 0.5 * mis), (0.2, 0.8 * fake + 0.2 * mis)):
        task = GANTask(model, data, loss="hinge", cond=cond, mismatch=m)
        got = task._negatives(out_fake, logits, w)
        assert torch.allclose(got, torch.as_tensor(expect)), (m, got, expect)
    assert GANTask(model, data, loss="hinge", cond=cond, mismatch=0.0)._mismatched(c_real, key) == (None, None)

    D = model.D.eval()                           # (eval: spectral norm's power iteration stays put)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        both = D(x, c_real, c_mis)
        assert torch.allclose(both[0], D(x, c_real), atol=1e-6) and torch.allclose(both[1], D(x, c_mis), atol=1e-6)
    passes = []
    hook = D.net.register_forward_hook(lambda *a: passes.append(1))
    for m, expect in ((0.5, 3), (0.0, 3)):     # D step: real + generated; G step: generated
        passes.clear()
        task = GANTask(model.train(), data, loss="hinge", cond=cond, mismatch=m)
        task.train_step(data.to_float(data.train_x[:8]), idx)
        assert len(passes) == expect, (m, len(passes))
    hook.remove()


@pytest.fixture(scope="module")
def text_run(captioned_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("tr") / "run"
    genlab.train("vae", dataset=f"folder:{captioned_folder}", condition="text", text_encoder="learned", epochs=1,
                 out=out, progress=False, log=lambda m: None)
    return out


def test_bad_input_is_one_line(text_run, trained_run, captioned_folder, tmp_path, cli_here, expect_user_error,
                               snapshot, mnist):
    cli = cli_here
    npz = tmp_path / "d.npz"
    np.savez(npz, x=mnist.train_x[:200, 0].numpy(), y=mnist.train_y[:200].numpy())
    genlab.train("vae", dataset=f"npy:{npz}", condition="class", epochs=1, out=tmp_path / "cls", progress=False,
                 log=lambda m: None)
    before = snapshot(tmp_path)
    for args, says in [
        (("sample", text_run, "--prompt", "  ", "--out", tmp_path / "a.png"), "--prompt is empty"),
        (("sample", trained_run, "--prompt", "a seven", "--out", tmp_path / "a.png"),
         "an unconditional model; --prompt needs a text-conditioned run"),
        (("sample", tmp_path / "cls", "--prompt", "a seven", "--out", tmp_path / "a.png"),
         "a class-conditional model (it takes --class: 0, 1"),
        (("sample", text_run, "--class", "3", "--out", tmp_path / "a.png"), "it takes --prompt TEXT, not --class"),
        (("train", "vae", "--dataset", f"npy:{npz}", "--condition", "text", "--out", tmp_path / "x"),
         "has none (captioned: mnist, fashion-mnist, emoji"),
        (("train", "gan", "--condition", "text", "--arch", "dcgan", "--out", tmp_path / "x"),
         "--condition text needs --arch sngan"),
        (("train", "vae", "--cvae", "standard", "--dataset", f"npy:{npz}", "--out", tmp_path / "x"),
         "--cvae goes with --condition"),
        (("train", "gan", "--condition", "class", "--unconditional", "--out", tmp_path / "x"),
         "give --condition or --unconditional, not both"),
        (("train", "gan", "--condition", "none", "--mode-seeking", "1", "--out", tmp_path / "x"),
         "--mode-seeking needs a condition"),
        (("train", "gan", "--condition", "class", "--cond-aug", "1", "--out", tmp_path / "x"),
         "--cond-aug needs --condition text"),
        (("train", "gan", "--condition", "class", "--mismatch", "0.2", "--out", tmp_path / "x"),
         "--mismatch needs --condition text"),
        (("interpolate", text_run, "--prompts", "a one", "", "--out", tmp_path / "w.png"), "--prompt is empty"),
        (("eval", trained_run, "--prompts", "heldout"), "an unconditional model; eval --prompts needs"),
        (("eval", text_run, "--prompts", tmp_path / "none.txt"), "no such prompts file"),
    ]:
        expect_user_error(cli(*args), says)
    assert snapshot(tmp_path) == before
    # a caption file that names a missing image stops training before anything is written
    (captioned_folder / "captions.txt").write_text((captioned_folder / "captions.txt").read_text()
                                                   + "gone.png\ta nine\n")
    try:
        expect_user_error(cli("train", "vae", "--dataset", f"folder:{captioned_folder}", "--condition", "text",
                              "--out", tmp_path / "y"), "names gone.png, which is not an image")
    finally:
        lines = (captioned_folder / "captions.txt").read_text().splitlines()
        (captioned_folder / "captions.txt").write_text("\n".join(lines[:-1]) + "\n")
    assert not (tmp_path / "y").exists()
    # a prompt longer than the encoder reads is truncated, with a note (not an error)
    r = cli("sample", text_run, "--prompt", " ".join(["a handwritten seven"] * 20), "--n", 4,
            "--out", tmp_path / "long.png")
    assert r.returncode == 0 and "longer than the learned encoder's 32 words" in r.stderr, r.stderr
