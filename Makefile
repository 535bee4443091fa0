# dsv3ctl: make targets. `make` (or `make help`) lists them.
# Set-up on a fresh machine is two commands: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install lint test test-fast demo demo-down tools testbed-up testbed-down testbed-status testbed-env image clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,lint]'
	@touch $@

install: $(STAMP) ## create .venv and install dsv3ctl with test and lint extras (pinned by constraints.txt)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check dsv3ctl tests benchmarks
	$(BIN)/mypy dsv3ctl

tools: ## build (or reuse from the cache) the pinned local-cluster tools from the Go module proxy
	@tools/build.sh

test: $(STAMP) tools ## run every test (builds the cluster tools on a cold machine; the cluster tests run for real)
	$(BIN)/pytest -q

test-fast: $(STAMP) ## unit tests only (no cluster, no network namespaces)
	$(BIN)/pytest -q -m "not cluster and not netns"
