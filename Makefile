# The two commands of the Quickstart. Both use one virtual environment (.venv, made when missing):
#   make reproduce   install what the articles need, then run every article's quick mode and report
#   make test        install the test tools and the other Keras backends too, then lint and test
# Options: make reproduce ARGS="--full"; make test PYTHON=python3.12; VENV=/elsewhere; make test WORKERS=0
# (the TensorFlow and JAX tests run in WORKERS processes, pytest-xdist; 0: in pytest's own; 2 by default,
# the cores of the CI machines: most of a test's time is tracing and compiling, which runs on one core;
# worksteal: a worker that runs out of tests takes some of the other's, so neither idles at the end).
# PyTorch's run stays in one process: its tests are mostly eager ops that use both cores already (here
# 184 s in one process, 253 s in two).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
WORKERS ?= 2
PY := $(VENV)/bin/python
# The JAX run keeps every program XLA compiles in a folder made for the run and deleted after it, or
# when it is stopped (JAX's persistent compilation cache, with no minimum compile time): the tests
# build many models and layers of the same shapes, each a new trace of a program compiled before, and
# the two workers share what either compiled. Here the JAX run took 859 s with it and 1124 s without
# (the latter partly under other load); on 34 CRF tests in one process, 84 s against 116 s and 68 s
# against 98 s. No size limit: with one, JAX takes a file lock on every read and write, and a run with
# it was slower than no cache. Without the lock, an entry read while the other worker is still writing
# it fails to load (a warning) and JAX compiles that program itself.
JAX_CACHE := JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

.PHONY: reproduce test lint

reproduce: $(VENV)/.run-installed
	$(PY) reproduce.py $(ARGS)

test: $(VENV)/.test-installed lint
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n $(WORKERS) --dist worksteal $(ARGS)
	cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && trap 'exit 1' INT TERM && \
	  JAX_COMPILATION_CACHE_DIR="$$cache" $(JAX_CACHE) KERAS_BACKEND=jax \
	  $(PY) -m pytest -n $(WORKERS) --dist worksteal -m "layers or backends" $(ARGS)
	KERAS_BACKEND=torch $(PY) -m pytest -m "layers or backends" $(ARGS)

lint: $(VENV)/.test-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

$(VENV)/.run-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@
