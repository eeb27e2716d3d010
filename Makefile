# Marketflow — `make run` brings the pipeline up, `make test` runs the checks (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install system-packages lock run test test-fast test-engines lint format bench bench-full bench-pathway clean

install: $(STAMP)

# Re-installs only when pyproject.toml or the lock changes (or the venv is missing): every
# package at the version pinned in requirements.lock, then the project itself, neither resolved
# again (the lock is complete; it carries pyproject's [tool.uv] override, which pip would refuse).
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (pyspark 4); set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# Re-resolve requirements.lock from pyproject.toml (keeps the pinned versions that still fit;
# `make lock UPGRADE=1` moves every package to its newest allowed version).
lock:
	@test -x $(BIN)/uv || $(MAKE) install
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --universal --python-version 3.11 \
		$(if $(UPGRADE),--upgrade) --quiet -o requirements.lock
	$(BIN)/uv pip compile --no-config benchmarks/pathway-requirements.in --python-version 3.11 \
		$(if $(UPGRADE),--upgrade) --quiet -o benchmarks/pathway-requirements.lock

# The Pathway baseline of the latency benchmark runs in a virtualenv of its own (Pathway is
# BSL-licensed, a baseline only, and needs pyarrow < 26): created by `make bench` when missing.
PATHWAY_VENV := .venv-pathway
PATHWAY_STAMP := $(PATHWAY_VENV)/.installed
$(PATHWAY_STAMP): benchmarks/pathway-requirements.lock | $(STAMP)
	$(BIN)/uv venv --quiet --allow-existing --python $(BIN)/python $(PATHWAY_VENV)
	$(BIN)/uv pip install --quiet --python $(PATHWAY_VENV)/bin/python \
		-r benchmarks/pathway-requirements.lock
	@touch $@
bench-pathway: $(PATHWAY_STAMP)

run: install
	$(BIN)/marketflow up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Three workers (pytest-xdist): most tests wait on a broker, a JVM or a stack, so they overlap on
# 2 cores; two workers start with half of the longest tests each, the third with short ones
# (conftest.py), then each takes the next tests as it frees up.
# Debian packages of the connectivity tests: stunnel4 (TLS in front of the test broker) and nginx
# (the UIs' reverse proxy). Installed when missing and apt-get can (root); else those tests skip
# with the reason (and fail under MARKETFLOW_REQUIRE_ENGINES=1, as in CI).
SYSTEM_PACKAGES := stunnel4:/usr/bin/stunnel4 nginx-light:/usr/sbin/nginx
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do test -x "$${p#*:}" || missing="$$missing $${p%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing (apt-get)"; \
			apt-get install -y -q $$missing >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1; } || \
			echo "could not install$$missing: the TLS and proxy tests will skip"; \
		else echo "missing$$missing (apt-get install$$missing): the TLS and proxy tests will skip"; fi; \
	fi

test: lint system-packages $(PATHWAY_STAMP)
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/python -m pytest -n 3 --dist load --durations=25 $(PYTEST_ARGS)

# The contributors' lane: everything that needs no Spark, no running stack and no engine beyond the
# embedded broker and PostgreSQL (marker `slow`, set in marketflow_assets_tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -n 3 -m "not slow" $(PYTEST_ARGS)

# Only the real-engine tests (also part of `make test`): Spark standalone cluster, password-protected
# PostgreSQL over TCP, confluent-kafka as a second client. Select/deselect with -m engines.
test-engines: install
	$(BIN)/python -m pytest -m engines $(PYTEST_ARGS)

bench: install $(PATHWAY_STAMP)
	$(BIN)/python -m benchmarks --quick

bench-full: install $(PATHWAY_STAMP)
	$(BIN)/python -m benchmarks --full

clean:
	rm -rf $(VENV) $(PATHWAY_VENV) data .pytest_cache .ruff_cache spark-warehouse metastore_db derby.log
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
