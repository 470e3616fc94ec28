# Every target bootstraps .venv from nothing and is idempotent. Packages install from the lock
# files (requirements/*.lock, exact versions with hashes, made by `make lock`), so every fresh
# clone runs the same program; they are reinstalled only when a lock file or pyproject.toml is
# newer than the stamp. The demo needs only the runtime lock, so a fresh `make demo` does not
# wait for the dev tools. `make test-latest` runs the suite on the newest versions the ranges
# in pyproject.toml allow, in a venv of its own, to meet drift on purpose.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
STAMP  := $(VENV)/.installed-dev
LOCK_RUNTIME := requirements/runtime.lock
LOCK_DEV := requirements/dev.lock
LATEST := .venv-latest
SCENARIO ?= demo
DEMO_SECONDS ?=
# uv pip compile: one lock for Linux, macOS and Windows (markers), for the Python the project
# supports.
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: setup demo test lint typecheck unit bench lock test-latest clean

setup: $(STAMP)

$(RUNTIME): pyproject.toml $(LOCK_RUNTIME)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK_RUNTIME)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) $(LOCK_DEV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK_DEV)
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

# Regenerate both lock files from pyproject.toml's ranges: pins that still fit are kept, so a
# changed range moves only what it must; `make lock UPGRADE=1` moves every pin to the newest
# version the ranges allow.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o $(LOCK_RUNTIME)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o $(LOCK_DEV)

# The suite on the newest versions the ranges allow, ignoring the lock (drift, on purpose).
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest

bench: $(RUNTIME)
	$(PY) bench/echo_latency.py

clean:
	rm -rf $(VENV) $(LATEST) demo-out .pytest_cache .mypy_cache .ruff_cache
