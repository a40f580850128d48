PY ?= .venv/bin/python

.PHONY: install test train plots bench bench-interactions bench-method model-cards model-card-runs publish

install:
	python3 -m venv .venv && .venv/bin/pip install -q "torch==2.13.0" -e ".[test,bench]"

# Both cores: the tests run one torch thread each (tests/conftest.py), so two workers halve the wall time.
test:
	$(PY) -m pytest -q -n 2

train:
	.venv/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no training/run.py

# The README's pictures: the main job's final/plots, copied to docs/images.
plots:
	.venv/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no training/run.py --output_dir bench_out/main_job --overwrite_output_dir true
	mkdir -p docs/images && cp bench_out/main_job/final/plots/*.png docs/images/

bench:
	$(PY) benchmarks/speed.py --preset tiny --out bench_out/speed_tiny.json

bench-interactions:
	$(PY) benchmarks/interactions.py --quick --out bench_out/interactions_quick.json

# DMIL-default vs DMIL-reference vs joint, ensemble, I2M2, two-stage and the plain-PyTorch joint and I2M2 on real
# signals (handwritten + spoken digits), 3 seeds:
# the quick version (one mixture, 800 steps; its three seeds trained at once): about 10 min on 2 CPU cores (596 s of
# benchmark, 10 min 2 s with start-up, measured with eight methods while a pip install shared the cores at first).
bench-method:
	OMP_NUM_THREADS=1 $(PY) benchmarks/real_signals.py --quick --jobs 3 --out bench_out/real_quick.json

# model_cards/: the cards of the checkpoints this project publishes (model_cards/README.md). `model-cards` re-renders
# them with the current code from the inputs kept beside each (seconds, no training; tests/hub/test_model_cards.py
# fails when a committed card is stale); `model-card-runs` trains the checkpoints into $(MODEL_CARD_RUNS) (the main
# job, then the real-signal benchmark's DMIL and I2M2 at its --quick settings with one seed: 5 min in all on 2 CPU
# cores), keeps their render inputs and renders; `publish` pushes them with their cards to $(HUB_NAMESPACE) (token:
# HF_TOKEN or `hf auth login`), and offline, without a token or a Hub that answers stops before any upload.
MODEL_CARD_RUNS ?= bench_out/model_cards
HUB_NAMESPACE ?= dmil-hf

model-cards:
	$(PY) model_cards/cards.py render

model-card-runs:
	OMP_NUM_THREADS=1 $(PY) model_cards/cards.py runs --runs $(MODEL_CARD_RUNS)

publish:
	@$(PY) model_cards/cards.py publish --namespace $(HUB_NAMESPACE) --runs $(MODEL_CARD_RUNS)
