# Two entry points for a newcomer (see README): `make train` and `make test`.
# Both create the virtual environment in .venv on first use and can be run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test lint benchmark clean

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

test: setup
	$(PY) -m pytest tests -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check hermes kernels tests benchmarks

benchmark: setup
	$(PY) -m pytest benchmarks --benchmark-only $(ARGS)

clean:
	rm -rf build *.egg-info hermes/*.so
