# twostage: the two commands of the README, and the checks behind them.
#   make reproduce   create .venv, install, run the main job (cpu profile: train, evaluate, rebuild tables and figures)
#   make test        create .venv, install, check notebooks/package/README are in sync, run every test
#   make seeds       after make reproduce: stage 2 of rows 9, 7 and 8 with two more seeds each (Table 6's training-noise floor)
#   make stage2      after make reproduce: the stage-2 study (does stage 2 refine its stage 1, and what does it take?)
#   make release     retrain the shipped 128 px model from scratch (release profile), evaluate it, rewrite twostage/assets/
#   make release-cpu the whole release recipe on a CPU in one job, sized for 150 min on a 2-core AVX2 CPU (release_cpu profile: train, fine-tune, evaluate)
#   make release-eval  evaluate the shipped weights again without training (no GPU): figures/release rebuilt, the edge blend re-chosen, their record rewritten
#   make release-finetune  train the shipped weights further (RELEASE_FINETUNE), write them, then evaluate them as release-eval does
#   make release-gpu-pack   write runs/gpu_pack/ (faces, a small VGG trunk, stlpips_pytorch, the peers scored) for a GPU machine without them
#   make release-gpu the same on one GPU (release_gpu profile), run there from the repository's root with the pack beside it
#   make demo        serve the demo notebook as a web page (Voilà) on 127.0.0.1:$(PORT) and print the address to open
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch and torchvision must be a pair that imports together; this pair installs from PyPI
# (and from this project's build machines' local wheels) and runs on CPU and CUDA.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= cpu
# auto: the precision that is fastest on this machine (fp32 on CPUs without native bf16); fp32 or bf16 to force one
PRECISION ?= auto
# make demo: the local port of the web page (a free one is used when it is taken)
PORT ?= 8866
STAMP := $(VENV)/.installed

.PHONY: install reproduce seeds stage2 release release-cpu release-eval release-finetune release-gpu-pack release-gpu test check readme export clean-nbs smoke
install: $(STAMP)

$(STAMP): settings.ini setup.py
	@echo "== creating $(VENV) and installing twostage (torch pair: $(TORCH_PINS))"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev,onnx,demo]" $(TORCH_PINS)
	touch $(STAMP)

reproduce: install
	$(BIN)/twostage-reproduce --profile $(PROFILE) --precision $(PRECISION)

# The training noise of Table 6: six more stage-2 runs over the main job's cached stage 1 (25 min on the
# 2-core AVX2 machine of the README, fp32), then every table, verdict and figure again; the seed results stay in results_<profile>.csv.
seeds: install
	$(BIN)/twostage-reproduce --profile $(PROFILE) --precision $(PRECISION) --seeds

# Stage 2 of the full model trained four other ways over the main job's cached stage 1 (more steps, its own
# learning rate, a smaller or no adversarial term), each against its stage 1's own output (stage2_study_<profile>.md);
# then Table 6's rows 7 and 8 with the long stage 2, and two more seeds of rows 9 and 8 there (stage2_long_<profile>.md).
stage2: install
	$(BIN)/twostage-reproduce --profile $(PROFILE) --precision $(PRECISION) --stage2

release: install
	$(BIN)/twostage-reproduce --profile release --precision $(PRECISION)

# The all-CPU release in one job (nbs/15_experiments.ipynb, the release_cpu profile): the release model with the VGG terms
# on the composite alone, 3,000 + 1,000 steps, then the fine-tune (800 joint steps), then the evaluation; writes twostage/assets/.
release-cpu: install
	$(BIN)/twostage-reproduce --profile release_cpu --finetune --precision $(PRECISION)

# The shipped weights evaluated on the protocol of the profile that made them, nothing trained (nbs/17_reproduce.ipynb,
# "The shipped weights without their run"); the weights stay as they are, their record gets this run's blend and scores.
release-eval: install
	$(BIN)/twostage-reproduce --shipped --precision $(PRECISION)

# The shipped weights trained further (nbs/17_reproduce.ipynb, "Training the shipped weights further": both stages, more
# thin strokes, RELEASE_FINETUNE), written as the shipped weights, then evaluated as release-eval does.
release-finetune: install
	$(BIN)/twostage-reproduce --shipped --finetune --precision $(PRECISION)

# The GPU path of the release (nbs/17_reproduce.ipynb): pack here, send the repository with runs/gpu_pack, run there.
# release-gpu installs nothing: it needs python3 with torch (and numpy, pandas, pillow, scikit-image, opencv, matplotlib,
# tqdm, safetensors), as on the GPU machines our builds borrow. It runs the whole recipe: the GPU run, the fine-tune, the evaluation.
GPU_PACK ?= runs/gpu_pack
release-gpu-pack: install
	$(PY) -c "from twostage.reproduce import pack_for_gpu; r = pack_for_gpu('$(GPU_PACK)'); print(r['faces']['faces'], r['mib'], 'MiB; peers scored in', r['peers']); print(r['command'])"

release-gpu:
	sh $(GPU_PACK)/run.sh

smoke: install
	$(BIN)/twostage-reproduce --profile smoke

# The demo notebook as a standalone web page (Voilà, the `demo` extra), the shipped release weights first;
# loopback only (the page has no login); Ctrl-C stops it. See nbs/20_demo.ipynb, "The demo as a web page".
.PHONY: demo
demo: install
	$(PY) -c "from twostage.demo import serve; serve(port=$(PORT))"

# README.md is index.ipynb rendered to markdown (nbdev_readme needs quarto, which we do not require).
readme: install
	$(BIN)/jupyter nbconvert --log-level=WARN --to markdown --RegexRemovePreprocessor.patterns="['^#\\| *hide']" --stdout nbs/index.ipynb > README.md

export: install
	$(BIN)/nbdev_export

clean-nbs: install
	$(BIN)/nbdev_clean

# Fails (after fixing the files in place) when notebooks were not clean, the package was not
# what the notebooks export, or README.md was not index.ipynb rendered.
check: install
	@h() { find nbs twostage README.md -type f \( -name '*.ipynb' -o -name '*.py' -o -name '*.md' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs md5sum; }; \
	before=$$(h); $(BIN)/nbdev_clean; after=$$(h); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: notebooks were not clean; nbdev_clean has cleaned them now, commit them"; exit 1; fi; \
	before=$$(h); $(BIN)/nbdev_export; after=$$(h); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: twostage/ was out of sync with nbs/; nbdev_export has rewritten it, commit it"; diff <(echo "$$before") <(echo "$$after"); exit 1; fi; \
	$(BIN)/jupyter nbconvert --log-level=WARN --to markdown --RegexRemovePreprocessor.patterns="['^#\\| *hide']" --stdout nbs/index.ipynb > .README.check.md; \
	if ! cmp -s .README.check.md README.md; then diff README.md .README.check.md | head -20; rm -f .README.check.md; echo "FAIL: README.md does not match nbs/index.ipynb; run make readme"; exit 1; fi; \
	rm -f .README.check.md; echo "ok: notebooks clean, package in sync, README in sync"

test: check
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(PY) -m pytest -q tests
