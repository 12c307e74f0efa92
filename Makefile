# The two commands a newcomer runs (see README.md):
#   make book   -> builds the Jupyter Book (cpu profile, embedded synthetic data) into book/_build/html
#   make test   -> ruff + pytest (what CI runs, via .ci/run)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Where datasets are looked for (os.pathsep separated; the first entry receives downloads and
# the generated phantom). ../shared/data holds the real COVID-SemiSeg slices when present.
export COVIDLIB_DATA_PATH ?= $(CURDIR)/data:$(abspath $(CURDIR)/../shared/data)
export COVIDLIB_SHARED_DATA ?= $(abspath $(CURDIR)/../shared/data)
PROFILE ?= cpu
RESULTS ?= $(CURDIR)/results

.PHONY: venv data book test lint clean help

help:
	@sed -n '1,4p' Makefile

# Pinned install. torch/torchvision come from this machine's local wheel store (pip's
# find-links); the stamp is renewed whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[book,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

venv: $(VENV)/.installed

data: venv
	$(BIN)/covidlib data synthetic

book: data
	$(BIN)/covidlib book --profile $(PROFILE) --results-dir $(RESULTS)
	@echo "Book built: open file://$(CURDIR)/book/_build/html/index.html"

lint: venv
	$(BIN)/ruff check .

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf book/_build book/_generated build .pytest_cache .ruff_cache
