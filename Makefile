# Two commands for a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./receiver-data
export RECEIVER_DATA_DIR ?= $(DATA_DIR)

.PHONY: run test lint typecheck pytest services bench clean

$(BIN)/receiver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: the service with its embedded defaults (embedded Redis, SQLite sink, dev secret)
run: $(BIN)/receiver
	@. scripts/dev-secret.sh && exec $(BIN)/receiver serve

## test: lint, type-check and the whole test suite against real Redis and PostgreSQL
test: $(BIN)/receiver services lint typecheck pytest

services:
	@scripts/ensure-services.sh

lint: $(BIN)/receiver
	$(BIN)/ruff check receiver tests bench
	$(BIN)/ruff format --check receiver

typecheck: $(BIN)/receiver
	$(BIN)/mypy

pytest: $(BIN)/receiver
	$(BIN)/pytest

## bench: ingest and apply throughput/latency against the bare-ASGI floor (see bench/)
bench: $(BIN)/receiver
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
