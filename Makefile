# The two commands of the README:  make demo  |  make test
# Each creates its own virtual environment (.venv) and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo serve test unit integration lint js-test bench clean

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

test: lint unit integration js-test

bench: $(BIN)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.event_latency

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
