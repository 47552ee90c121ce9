# `make demo` and `make test` do all set-up on a fresh machine: they create or refresh
# the virtualenv in .venv (torch pinned by constraints.txt) and install the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= var/demo
DEMO_MODEL := worker/engine/assets/demo/digits_cnn.pt

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,biggan]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/robustaudit audit --model $(DEMO_MODEL) --dataset builtin:digits --n-samples 200 \
	  --suite clean --gate 'clean.top1>=0.9' --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check service worker tests bench scripts
	$(VENV)/bin/mypy worker/engine

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
