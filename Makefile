PY ?= .venv/bin/python

.PHONY: install test train bench bench-interactions

install:
	python3 -m venv .venv && .venv/bin/pip install -q "torch==2.13.0" -e ".[test,bench]"

test:
	$(PY) -m pytest -q

train:
	.venv/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no training/run.py

bench:
	$(PY) benchmarks/speed.py --preset tiny --out bench_out/speed_tiny.json

bench-interactions:
	$(PY) benchmarks/interactions.py --quick --out bench_out/interactions_quick.json
