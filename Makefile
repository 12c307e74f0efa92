# The two commands a newcomer runs (see README.md):
#   make book   -> builds the Jupyter Book (cpu profile, embedded synthetic data) into book/_build/html
#   make test   -> ruff + pytest (what CI runs, via .ci/run)
#   make test-browser -> headless Chromium tests of the built book and of the widget in JupyterLab
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

.PHONY: venv data book test lint clean help vendor chromium test-browser bench verify-reference

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

# The JavaScript the book's pages load (widget manager, RequireJS, anywidget, MathJax) comes
# from the npm registry (package.json + package-lock.json) and is served from
# book/_assets/vendor, never from a CDN. Debian's nodejs/npm are installed when npm is missing.
NPM ?= npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
node_modules/.covidlib-installed: package.json package-lock.json
	@command -v $(NPM) >/dev/null || { echo "npm not found: installing Debian's nodejs and npm"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	$(NPM) ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

book/_assets/vendor/.installed: node_modules/.covidlib-installed | venv
	$(BIN)/python -m covidlib.report.offline node_modules book/_assets/vendor

vendor: book/_assets/vendor/.installed

# Incremental: only chapters whose notebook, parameters, covidlib sources or results changed
# are executed again; `make book FORCE=1` executes every chapter.
book: data vendor
	$(BIN)/covidlib book --profile $(PROFILE) --results-dir $(RESULTS) $(if $(FORCE),--force,)
	@echo "Book built: open file://$(CURDIR)/book/_build/html/index.html"

# Benchmarks (<= 10 min on 2 CPU cores; run on a quiet machine): speed, memory and scaling in
# one run -> bench_results/bench.json, then the book's Performance page is executed from it.
bench: venv
	$(BIN)/python -m covidlib.bench --out bench_results/bench.json --page --results-dir $(RESULTS)

# The published reference run (reference/, issue 14): a sample of its runs recomputed from
# scratch at its torch thread count, every committed number compared (abs. tolerance 1e-5).
# VERIFY=ci (what .ci/run does): the cheapest P2 and P1 runs, a few minutes; VERIFY=full:
# one run of every verifiable kind plus the cheapest others, <= ~15 min on 2 CPU cores.
# Runs on real data that ../shared/data lacks are skipped with a message.
VERIFY ?= full
verify-reference: venv
	OMP_NUM_THREADS=1 $(BIN)/covidlib reference verify --sample $(VERIFY)

lint: venv
	$(BIN)/ruff check .

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --ignore=tests/browser

# Real-browser tests: Debian's chromium + chromium-driver (apt-get, once) driven by Playwright
# (never `playwright install`). Without COVIDLIB_BOOK_HTML they build a small book of their
# own; `make book && COVIDLIB_BOOK_HTML=book/_build/html make test-browser` checks the whole one.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] || ! command -v chromedriver >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver"; \
	  start=$$(date +%s); \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null && \
	  echo "chromium installed in $$(( $$(date +%s) - start )) s"; \
	fi

test-browser: venv data vendor chromium
	$(BIN)/python -m pytest tests/browser

clean:
	rm -rf book/_build book/_generated book/_assets/vendor build .pytest_cache .ruff_cache
