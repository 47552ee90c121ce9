# `make demo` and `make test` do all set-up on a fresh machine: they create or refresh
# the virtualenv in .venv (torch pinned by constraints.txt) and install the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= var/demo

.PHONY: install demo test fuzz lint bench clean openapi

$(STAMP): pyproject.toml constraints.txt
	@# the sandbox for uploaded models (bubblewrap); the service refuses models without it
	command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq bubblewrap) \
	  || echo "warning: install bubblewrap (apt-get install bubblewrap): without it the service refuses uploads"; }
	@# a headless browser for the report.html test (Debian's chromium, driven by playwright; skipped without it)
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "warning: install chromium (apt-get install chromium): without it the report.html browser test is skipped"; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,biggan,service,timm,hf,onnx]'
	touch $(STAMP)

install: $(STAMP)

# The embedded service (SQLite store and broker, ./var, no Redis): start it, audit the demo model
# with every registered suite at its demo_params, print the verdict and where report.json, report.html
# and artifacts/ are (all in $(DEMO_OUT)), stop it. Progress is one line per step when not on a terminal.
demo: install
	$(PY) -m service.demo --home var/demo-service --out $(DEMO_OUT)

# The OpenAPI document is generated from the app (and the suite registry): run after adding a suite.
openapi: install
	$(PY) -m service.cli openapi

test: install
	$(PY) -m pytest -q -ra

# Schemathesis against the served OpenAPI document with auth on: >= 1,000 deterministic cases,
# positive and negative; fails on any 5xx and prints the case and 5xx counts.
fuzz: install
	$(PY) -m pytest -q -p no:cacheprovider tests/fuzz/fuzz_api.py

# CPU benchmarks (ratios against baselines in the same run); see each file for GPU options.
bench: install
	$(PY) bench/fragile.py
	$(PY) bench/attacks.py
	$(PY) bench/attacks_extras.py
	$(PY) bench/autoattack.py
	$(PY) bench/corruptions.py

lint: install
	$(VENV)/bin/ruff check service worker tests bench scripts
	$(VENV)/bin/mypy worker/engine

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
