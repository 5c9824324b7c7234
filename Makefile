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

.PHONY: help setup protos lint run demo test bench stop

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install --quiet 'uv==0.13.*'
	uv sync --all-packages --frozen
	@touch $@

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm install --no-audit --no-fund --loglevel=error
	@touch $@

$(STUBS)/.generated: .venv/.synced $(PROTO_FILES)
	rm -rf $(STUBS)/{events,ingestion,identity,profile,segmentation,consent,delivery}
	mkdir -p $(STUBS)
	uv run --frozen python -m grpc_tools.protoc -I protos \
	  --python_out=$(STUBS)/.. --pyi_out=$(STUBS)/.. --grpc_python_out=$(STUBS)/.. $(PROTO_FILES)
	@touch $@

setup: .venv/.synced $(STUBS)/.generated $(BUF) ## install packages and tools, generate stubs

protos: $(STUBS)/.generated ## generate the Python stubs from protos/

lint: $(BUF) ## buf lint, and buf breaking against main (or the previous commit on main)
	$(BUF) lint
	deploy/local/buf-breaking.sh $(BUF)

run: setup ## run the whole mesh locally with a demo data set (STORE=cassandra for Cassandra)
	deploy/local/nats.sh start
	@if [ "$${STORE:-embedded}" = cassandra ]; then deploy/local/cassandra.sh start; fi
	uv run --frozen mosaic run --demo

test: setup lint ## run the whole test suite against real nats-server and Cassandra
	deploy/local/cassandra.sh start
	uv run --frozen pytest $(PYTEST_ARGS)

bench: setup ## run the benchmarks (they print figures; never pass/fail); those on Cassandra start the node
	uv run --frozen python -m bench $(BENCH)

stop: ## stop the local nats-server and Cassandra
	deploy/local/nats.sh stop
	deploy/local/cassandra.sh stop
