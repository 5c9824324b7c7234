SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

# uv may not download interpreters here: use the machine's CPython 3.11.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3.11
PROTO_FILES := $(shell find protos -name '*.proto')
STUBS := libs/mosaic-proto/src/mosaic
BUF := tools/node_modules/.bin/buf
# uv from PATH, or a private copy that deploy/local/prereqs.sh installs (never into a system Python)
UV := $(or $(shell command -v uv),$(CURDIR)/.local/uv/bin/uv)
PREREQS := deploy/local/prereqs.sh
PY_TREES := libs services tests bench conftest.py
# mypy: every package's src, bench and the tests in one run; the generated stubs are read, not checked.
# (explicit_package_bases names a test module by its path, so the many conftest.py do not collide)
TYPED_TREES := $(wildcard libs/mosaic-platform/src libs/mosaic-cli/src libs/mosaic-testing/src services/*/src) bench \
  $(wildcard libs/*/tests services/*/tests) tests conftest.py

.PHONY: help setup protos lint run demo test test-fast bench stop observe

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(UV):
	$(PREREQS) uv >/dev/null

.venv/.synced: $(UV) pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml
	$(UV) sync --all-packages --frozen
	@touch $@

$(BUF): tools/package.json tools/package-lock.json
	$(PREREQS) node
	cd tools && npm install --no-audit --no-fund --loglevel=error
	@touch $@

# Every generated package is removed first (all of them, from the tree itself, never a list by
# hand), so a deleted or renamed proto leaves no stale module behind.
$(STUBS)/.generated: .venv/.synced $(PROTO_FILES)
	find $(STUBS) -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
	mkdir -p $(STUBS)
	$(UV) run --frozen python -m grpc_tools.protoc -I protos \
	  --python_out=$(STUBS)/.. --pyi_out=$(STUBS)/.. --grpc_python_out=$(STUBS)/.. $(PROTO_FILES)
	@touch $@

setup: .venv/.synced $(STUBS)/.generated $(BUF) ## install packages and tools, generate stubs
	$(PREREQS) nats

protos: $(STUBS)/.generated ## generate the Python stubs from protos/

lint: $(BUF) .venv/.synced ## buf lint and breaking against main; ruff lint and format check; mypy
	$(BUF) lint
	deploy/local/buf-breaking.sh $(BUF)
	$(UV) run --frozen ruff check $(PY_TREES)
	$(UV) run --frozen ruff format --check $(PY_TREES)
	$(UV) run --frozen mypy $(TYPED_TREES)

run: setup ## run the whole mesh locally with a demo data set (STORE=cassandra for Cassandra)
	deploy/local/nats.sh start
	@if [ "$${STORE:-embedded}" = cassandra ]; then $(PREREQS) java && deploy/local/cassandra.sh start; fi
	$(UV) run --frozen mosaic run --demo

observe: setup ## make run with tracing on: Zipkin (trace UI :9411/zipkin/), Jaeger (API :16686) and Prometheus (:9090) started first
	deploy/local/jaeger.sh start
	deploy/local/zipkin.sh start
	deploy/local/prometheus.sh start
	OTEL_TRACES_EXPORTER=otlp,zipkin OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
	OTEL_EXPORTER_ZIPKIN_ENDPOINT=http://127.0.0.1:9411/api/v2/spans $(MAKE) --no-print-directory run

test: setup lint ## run the whole test suite against real nats-server and Cassandra
	$(PREREQS) java
	$(PREREQS) prometheus
	deploy/local/cassandra.sh start
	$(UV) run --frozen pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-fast: setup ## the pure-logic and embedded-store tests: no Cassandra, no servers (about a minute)
	$(PREREQS) prometheus
	MOSAIC_TEST_WITHOUT_CASSANDRA=1 $(UV) run --frozen pytest -m "not cassandra and not servers" -n 2 $(PYTEST_ARGS)

bench: setup ## run the benchmarks (they print figures; never pass/fail); those on Cassandra start the node
	$(UV) run --frozen python -m bench $(BENCH)

stop: ## stop the local nats-server and Cassandra
	deploy/local/nats.sh stop
	deploy/local/cassandra.sh stop
