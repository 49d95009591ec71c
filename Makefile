# feedrank: the two commands a newcomer needs.
#   make demo   sets up .venv, builds a synthetic world, trains, serves a feed on :8000
#   make test   sets up .venv if missing, runs the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test smoke setup clean help redis-server browser wrk bench-serve

help:
	@echo "make demo   - set up, build a synthetic world, train, serve on http://127.0.0.1:8000"
	@echo "make test   - set up (if needed) and run the whole test suite"
	@echo "make smoke  - the CI smoke demo: small world, own server, checks answers, exits"
	@echo "make bench-serve - the load benchmark (wrk) on the 1M x 1M synthetic world"

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# redis-server from Debian's packages: the redis:// feature-store backend's tests start their own
# (tests/unit/features/test_store_contract.py). Installed only when missing (needs root/apt).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { echo "==> installing redis-server (Debian)"; apt-get install -y redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y redis-server >/dev/null; }; }

# Debian's chromium + chromium-driver: the dashboard's headless-browser test
# (tests/integration/test_dashboard_browser.py, Selenium). Installed only when missing (needs root/apt).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { echo "==> installing chromium + chromium-driver (Debian)"; apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null || { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }; }

# wrk from Debian's packages: the load generator of `feedrank bench serve` only (not used by
# `make test`). Installed only when missing (needs root/apt).
wrk:
	@command -v wrk >/dev/null 2>&1 || { echo "==> installing wrk (Debian)"; apt-get install -y wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y wrk >/dev/null; }; }

# the serving load benchmark (benchmarks/README.md): 1M users x 1M items, 2 workers
bench-serve: wrk $(STAMP)
	$(VENV)/bin/feedrank bench serve --users 1000000 --items 1000000 --rates 100,200,300,400 --seconds 15 --workers 2

# torch first, from the CPU wheel (pip's find-links holds it); then everything else under
# constraints.txt so nothing can pull another torch.
$(STAMP): $(PY) pyproject.toml constraints.txt | redis-server
	@echo "==> installing torch (CPU) and feedrank into $(VENV)"
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0 -c constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[dev,bench]'  # bench: implicit, the CF baselines' tests
	@# feedrank[scale] (TorchRec, tests/integration/test_torchrec.py): torchrec without its deps, which would move torch
	$(PIP) install -q -c constraints.txt -e '.[scale]'
	$(PIP) install -q -c constraints.txt --no-deps torchrec==1.8.0
	@$(PY) -c "import torch, sys; v=torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch moved: '+v)"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/feedrank demo

smoke: $(STAMP)
	$(VENV)/bin/feedrank demo --smoke

test: redis-server browser $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) var build src/*.egg-info
