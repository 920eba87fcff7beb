# The two commands of the README:  make demo  |  make test
# Each creates its own virtual environment (.venv) and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

CHROMIUM ?= /usr/bin/chromium

.PHONY: demo serve test unit integration integration-cluster lint sdk sdk-test browser-test chromium bench \
        bench-feed-read clean \
        services-install services-up services-down

$(BIN)/.runtime: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.dev: $(BIN)/.runtime
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.runtime sdk
	$(BIN)/pushrec demo

serve: $(BIN)/.runtime
	$(BIN)/pushrec serve

lint: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(BIN)/.dev
	$(BIN)/pytest tests/unit -q

# A real Kafka broker (KRaft; jars from Maven Central, cached in .cache/kafka) and a real Redis
# (Debian's redis-server, apt-installed when missing and root) on 127.0.0.1:19092 / :16379.
# `services.sh run` starts both, exports PUSHREC_TEST_KAFKA_BOOTSTRAP / PUSHREC_TEST_REDIS_URL into
# the command, and stops both when it ends — pass, fail or Ctrl-C.
services-install:
	scripts/kafka.sh install

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down

integration: $(BIN)/.dev
	scripts/services.sh run $(BIN)/pytest tests/integration -q

# The same services plus a local Redis Cluster (scripts/redis-cluster.sh: 3 masters + 3 replicas
# on 127.0.0.1:17000-17005); every server a test starts runs in cluster mode
# (PUSHREC_TEST_REDIS_CLUSTER=1, see tests/integration/conftest.py). CLUSTER_TESTS names what runs:
# by default the whole integration suite (README, "Redis Cluster", says what stays single-node).
CLUSTER_TESTS ?= tests/integration
integration-cluster: $(BIN)/.dev
	SERVICES_CLUSTER=1 PUSHREC_TEST_REDIS_CLUSTER=1 scripts/services.sh run $(BIN)/pytest $(CLUSTER_TESTS) -q

# The TypeScript SDK: devDependencies (typescript, esbuild) from npm, built into client-sdk-js/dist
# (the demo page loads its browser bundle from there).
client-sdk-js/node_modules/.package-lock.json: client-sdk-js/package-lock.json
	cd client-sdk-js && npm ci --silent --no-audit --no-fund

sdk: client-sdk-js/node_modules/.package-lock.json
	cd client-sdk-js && npm run --silent build

sdk-test: client-sdk-js/node_modules/.package-lock.json
	cd client-sdk-js && npm run --silent typecheck && npm test --silent && npm run --silent size

# Debian's Chromium (no browser download): installed when missing and we may (root, apt).
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) or set CHROMIUM=path"; exit 1; fi; }

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	cd tests/browser && npm ci --silent --no-audit --no-fund

browser-test: $(BIN)/.runtime sdk chromium tests/browser/node_modules/.package-lock.json
	cd tests/browser && PUSHREC_PYTHON=$(abspath $(BIN)/python) CHROMIUM_PATH=$(CHROMIUM) node --test

test: lint unit integration integration-cluster sdk-test browser-test

bench: $(BIN)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.event_latency

# REST feed reads under open-loop load (needs Go: the load generator is built into .cache/;
# --profile needs py-spy)
bench-feed-read: $(BIN)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.feed_read

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
