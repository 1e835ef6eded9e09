# Two commands for a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./receiver-data
export RECEIVER_DATA_DIR ?= $(DATA_DIR)

.PHONY: run test lint typecheck pytest services browser screenshots bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The service alone, then the test tools on top; each stamp reinstalls when pyproject changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

## run: the service with its embedded defaults (embedded Redis, SQLite sink, dev secret)
run: $(VENV)/.installed-run
	@VENV_BIN='$(abspath $(BIN))'; . scripts/dev-secret.sh && . scripts/dev-console.sh && exec $(BIN)/receiver serve

## test: lint, type-check and the whole test suite against real Redis and PostgreSQL
test: $(VENV)/.installed-test services browser lint typecheck pytest

# The console's browser tests drive Debian's Chromium; Playwright never downloads one.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

## screenshots: refresh docs/screenshots/*.png (the README's console pictures) from the browser tests
screenshots: $(VENV)/.installed-test services browser
	CONSOLE_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest tests/test_console_browser.py -q

services:
	@scripts/ensure-services.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check receiver tests bench
	$(BIN)/ruff format --check receiver tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

## bench: ingest and apply throughput/latency against the bare-ASGI floor (see bench/)
bench: $(VENV)/.installed-test
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py

## lock: regenerate requirements.lock, the hashed runtime dependencies the image installs
# Keeps the pins that still satisfy pyproject.toml; `make lock UPGRADE=1` moves every pin to
# the newest release allowed. Universal (every platform's markers and hashes, aarch64 and
# x86_64 alike) for Python 3.11, the image's; runtime dependencies only, no test extras.
lock: | $(BIN)/python
	$(BIN)/pip install --quiet 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) --quiet \
		--output-file requirements.lock

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
