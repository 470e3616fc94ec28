# Every target bootstraps .venv from nothing and is idempotent: packages are (re)installed only
# when pyproject.toml is newer than the stamp. The demo needs only the runtime dependencies, so a
# fresh `make demo` does not wait for the dev tools.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
STAMP  := $(VENV)/.installed-dev
SCENARIO ?= demo
DEMO_SECONDS ?=

.PHONY: setup demo test lint typecheck unit bench clean

setup: $(STAMP)

$(RUNTIME): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(RUNTIME)
	$(PY) -m bot demo --scenario $(SCENARIO) $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS)) --json demo-out/summary.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# pytest exits 5 when it collects no test; make treats any non-zero exit as failure, so an empty
# run is an error, never a pass.
unit: $(STAMP)
	$(PY) -m pytest

test: lint typecheck unit

bench: $(RUNTIME)
	$(PY) bench/echo_latency.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
