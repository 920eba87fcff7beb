# The two commands of the README:  make demo  |  make test
# Each creates its own virtual environment (.venv) and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

CHROMIUM ?= /usr/bin/chromium

.PHONY: demo serve test unit integration lint js-test browser-test chromium bench clean

$(BIN)/.runtime: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.dev: $(BIN)/.runtime
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.runtime
	$(BIN)/pushrec demo

serve: $(BIN)/.runtime
	$(BIN)/pushrec serve

lint: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(BIN)/.dev
	$(BIN)/pytest tests/unit -q

integration: $(BIN)/.dev
	$(BIN)/pytest tests/integration -q

js-test:
	node --test examples/shop/

# Debian's Chromium (no browser download): installed when missing and we may (root, apt).
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) or set CHROMIUM=path"; exit 1; fi; }

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	cd tests/browser && npm ci --silent --no-audit --no-fund

browser-test: $(BIN)/.runtime chromium tests/browser/node_modules/.package-lock.json
	cd tests/browser && PUSHREC_PYTHON=$(abspath $(BIN)/python) CHROMIUM_PATH=$(CHROMIUM) node --test

test: lint unit integration js-test browser-test

bench: $(BIN)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.event_latency

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
