# `make demo` and `make test` create .venv (pinned in requirements.txt) when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dvr-installed
OUT ?= outputs/demo

.PHONY: demo test lint bench docs env clean gpu-deps

env: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dvr demo --out $(OUT)

# One pytest worker per core (pytest-xdist), one math thread per worker: the tests' tensors are
# small, so workers pay better than threads (4.1 min against 5.2 on two cores).
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -ra -n auto tests

lint: $(STAMP)
	$(VENV)/bin/ruff check dvr_plugin integration tests examples

bench: $(STAMP)
	$(PY) -m integration.benchmarks.bench_core

# The documentation site (docs/, the tutorials, the API reference) in site/; fails on any warning.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Pure-Python dependencies the GPU machine's image lacks (omegaconf and its parser runtime),
# unpacked into .gpudeps/site for carrying there beside .gpubundle; the scripts of
# integration/gpu_runs/ put it on PYTHONPATH when present.
gpu-deps: $(STAMP)
	rm -rf .gpudeps && mkdir -p .gpudeps/wheels .gpudeps/site
	$(PY) -m pip download -q --no-deps -d .gpudeps/wheels omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
	$(PY) -m pip install -q --no-deps --no-index --target .gpudeps/site .gpudeps/wheels/*

clean:
	rm -rf $(VENV) outputs site
