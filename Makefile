# Two entry points for a newcomer (see README): `make train` and `make test`.
# Both create the virtual environment in .venv on first use and can be run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test cuda-check lint benchmark gpu-check clean

$(VENV)/.deps: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=69" wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $@

setup: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

train: setup
	$(PY) -m hermes.train $(ARGS)

test: setup cuda-check lint
	$(PY) -m pytest tests -q $(ARGS)

# Compile check of hermes._C's CUDA kernels (no GPU needed): builds the extension with its CUDA
# part into build/cuda-check (ninja, incremental) and fails when the CUDA sources do not compile.
# Skipped, saying so, where there is no CUDA toolkit. `make setup` builds the CPU part only,
# unless a GPU is visible (then `pip install -e .` builds both).
CUDA_HOME ?= $(lastword $(sort $(wildcard /usr/local/cuda-*)))
cuda-check: setup
	@if [ -z "$(CUDA_HOME)" ] || [ ! -x "$(CUDA_HOME)/bin/nvcc" ]; then \
		echo "cuda-check: skipped, no CUDA toolkit (set CUDA_HOME)"; \
	else \
		echo "cuda-check: compiling the CUDA kernels with $(CUDA_HOME) into build/cuda-check"; \
		CUDA_HOME=$(CUDA_HOME) HERMES_CUDA=1 $(PY) setup.py -q build_ext \
			--build-temp build/cuda-check/temp --build-lib build/cuda-check/lib; \
	fi

# Lint and formatting (ruff, pinned in the dev extra); part of `make test`, hence of CI.
lint: setup
	$(VENV)/bin/ruff check hermes kernels tests benchmarks
	$(VENV)/bin/ruff format --check hermes kernels tests benchmarks

benchmark: setup
	$(PY) -m pytest benchmarks --benchmark-only $(ARGS)

# The GPU check (benchmarks/README.md): on a machine with a CUDA GPU, `make setup` builds the
# extension with its CUDA kernels, then every `gpu`-marked test runs and the GPU benchmarks at
# three sizes per op; summary in $(OUT)/gpu_check.{json,md}, written as it goes (under 8 min on
# an H100/H200). Without a GPU it says so and writes a summary of skipped steps.
OUT ?= reports/gpu-check
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out $(OUT) $(ARGS)

clean:
	rm -rf build *.egg-info hermes/*.so
