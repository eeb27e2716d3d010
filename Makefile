# Marketflow — `make run` brings the pipeline up, `make test` runs the checks (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install run test test-engines lint format bench bench-full clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (pyspark 4); set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

run: install
	$(BIN)/marketflow up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Only the real-engine tests (also part of `make test`): Spark standalone cluster, password-protected
# PostgreSQL over TCP, confluent-kafka as a second client. Select/deselect with -m engines.
test-engines: install
	$(BIN)/python -m pytest -m engines $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks --quick

bench-full: install
	$(BIN)/python -m benchmarks --full

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache spark-warehouse metastore_db derby.log
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
