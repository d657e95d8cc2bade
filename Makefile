# narrowgate: build the book and run the tests.
#
#   make test          venv (once) + pytest, offline
#   make book          venv + toy models (cached) + execute notebooks in place + jupyter-book build
#   make book-smoke    same, with small smoke parameters (SMOKE_PARAMS, default -p n_samples 40);
#                      like make book it rewrites the notebooks in place, here with smoke outputs
#   make html          only the jupyter-book build of the already executed notebooks
#   make bench         timing/memory benchmarks → benchmarks/results.md (BENCH_ARGS=--quick: smaller)
#   make clean         remove _build/ ;  make distclean  also removes .venv and bundled MathJax
#
# Variables: NB_PARAMS="-p model_id ... -p device cuda" (extra papermill parameters for every
# notebook), SMOKE_PARAMS, TOY_TRAIN_ARGS, PYTEST_ARGS, PYTEST_TIMEOUT, TORCH_PIP_ARGS, PYTHON.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
TORCH_PIP_ARGS ?=
KERNEL_NAME := narrowgate

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
MATHJAX := book/_static/mathjax/tex-svg.js
NB_PARAMS ?=
SMOKE_PARAMS ?= -p n_samples 40
TOY_TRAIN_ARGS ?=
PYTEST_ARGS ?=
PYTEST_TIMEOUT ?= 600

# Everything runs offline and headless.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: help venv test book book-smoke toy notebooks html clean distclean

help:
	@sed -n '2,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

# The venv is a file target: rebuilt only when pyproject.toml changes. torch first, pinned, so
# the resolver does not pull a different (e.g. multi-GB CUDA) build for the dependencies.
$(VENV_STAMP): pyproject.toml
	test -x $(VENV_BIN)/python || $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/python -m pip install $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(VENV_BIN)/python -m pip install -e '.[dev,book]'
	$(VENV_BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL_NAME) \
		--display-name 'Python (narrowgate)' >/dev/null
	touch $@

venv: $(VENV_STAMP)

test: $(VENV_STAMP)
	$(VENV_BIN)/python -m pytest -x -q --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

$(MATHJAX):
	scripts/fetch_mathjax.sh $@

# Toy models are only needed to execute notebooks; `narrowgate toy train` caches its checkpoints.
toy: $(VENV_STAMP)
	$(VENV_BIN)/narrowgate toy train $(TOY_TRAIN_ARGS)

notebooks: $(VENV_STAMP)
ifneq ($(NOTEBOOKS),)
	$(MAKE) --no-print-directory toy
	# tiny toy models run fastest on one thread (and do not fight over the 2 cores)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV_BIN)/python scripts/execute_notebooks.py --kernel $(KERNEL_NAME) $(NB_PARAMS) $(NOTEBOOKS)
else
	@echo "No notebooks in notebooks/: nothing to execute."
endif

html: $(VENV_STAMP) $(MATHJAX)
	$(VENV_BIN)/jupyter-book build . -W -n --keep-going

book: $(VENV_STAMP) $(MATHJAX)
	$(MAKE) --no-print-directory notebooks
	$(MAKE) --no-print-directory html
	@echo "Book: _build/html/index.html"

book-smoke:
	$(MAKE) --no-print-directory book NB_PARAMS='$(SMOKE_PARAMS) $(NB_PARAMS)'

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) book/_static/mathjax .pytest_cache

# Benchmarks (benchmarks/README.md): each script rewrites its own section of benchmarks/results.md.
BENCH_ARGS ?=
BENCH_SCRIPTS := extraction memory cache book gpu overlap_memory fused

.PHONY: bench
bench: $(VENV_STAMP)
	for name in $(BENCH_SCRIPTS); do $(VENV_BIN)/python benchmarks/$$name.py $(BENCH_ARGS); done
