# One entry point for humans and CI. Everything installs into .venv; nothing global.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint plugins proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

tests/plugins/node_modules: tests/plugins/package-lock.json
	cd tests/plugins && npm ci --no-audit --no-fund
	touch $@

setup: $(VENV)/.installed tests/plugins/node_modules

plugins: setup
	cd tests/plugins && npm run build

proto: setup
	$(BIN)/python scripts/gen_proto.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check extproc tests
	$(BIN)/mypy extproc

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) tests/plugins/node_modules tests/plugins/build
