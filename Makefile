PY ?= .venv/bin/python

.PHONY: install test train plots bench bench-interactions bench-method

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
