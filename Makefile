# Two commands on a fresh machine: `make run` and `make test`.
# Both create .venv and install the project (with its dev tools) on first use.

PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench sim system-deps clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/spindle up --data-dir ./.spindle

lint: $(STAMP)
	$(BIN)/ruff check spindle tests
	$(BIN)/ruff format --check spindle tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/pytest -q

test: lint typecheck unit

# redis-cli (Debian package redis-tools) is a real peer in the RESP tests, and
# redis-server/redis-benchmark the peer of `spindle bench resp`. Installed with apt-get
# where missing and we are root; otherwise the tests that need them say so and skip.
system-deps:
	@command -v redis-cli >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing redis-tools (redis-cli) with apt-get"; \
			apt-get update -qq >/dev/null && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; \
		else echo "note: redis-cli not found and not root: its tests will skip"; fi; }

sim: $(STAMP)
	$(BIN)/spindle sim --seeds 1000 --faults all

# `spindle bench cluster` runs etcd (Debian package etcd-server) and drives it through its
# gRPC API with grpcio (in the bench extra).
bench: $(STAMP)
	@command -v etcd >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing etcd-server with apt-get"; \
			apt-get update -qq >/dev/null && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; \
		else echo "note: etcd not found and not root: bench cluster will say how to get it"; fi; }
	@$(BIN)/python -c 'import grpc' 2>/dev/null || \
		$(BIN)/python -m pip install -q --disable-pip-version-check 'grpcio>=1.60'
	$(BIN)/spindle bench kv
	$(BIN)/python -m spindle.bench.cluster

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
