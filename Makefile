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
	@# setuptools' BuildBackendWarning about editable installs is advice for package authors, not for users
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install -q -c constraints.txt -e '.[test,lint]'
	@touch $@

install: $(STAMP) ## create .venv and install dsv3ctl with test and lint extras (pinned by constraints.txt)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check dsv3ctl tests benchmarks
	$(BIN)/mypy dsv3ctl

tools: ## build (or reuse from the cache) the pinned local-cluster tools from the Go module proxy
	@tools/build.sh

test: $(STAMP) sys-deps tools kserve-venv test-image ## run every test (apt test deps, builds the cluster tools on a cold machine; cluster and netns tests run for real)
	$(BIN)/pytest -q

test-fast: $(STAMP) ## unit tests only (no cluster, no network namespaces)
	$(BIN)/pytest -q -m "not cluster and not netns"

demo: $(STAMP) sys-deps testbed-up ## the main job on the embedded default (plan, weights verify, repo build, render, deploy, status), then the chart on the real nodes answering one request
	@tools/demo.sh

demo-down: ## remove what `make demo` made: the release, the local cluster and .run/demo
	-@$(BIN)/python -m dsv3ctl.adapters.testbed status >/dev/null 2>&1 && eval "$$($(BIN)/python -m dsv3ctl.adapters.testbed env)" && $(BIN)/dsv3ctl undeploy || true
	@$(BIN)/python -m dsv3ctl.adapters.testbed down
	rm -rf .run/demo

# KServe's own v2 server: an independent implementation of Triton's protocol that `dsv3ctl health` is
# cross-checked against (tests/independent/kserve_v2_server.py); its own venv, out of the project's (~450 MB).
KSERVE_VENV := $(HOME)/.cache/dsv3ctl/kserve-venv
.PHONY: test-image
test-image: sys-deps ## the test image from docker/Dockerfile's test target (buildah; cached by its inputs; root)
	@if [ "$$(id -u)" = 0 ]; then tools/test-image.sh >/dev/null; else echo "test-image: not root: no test image (the real-node tests and the demo's real group need root)"; fi
.PHONY: kserve-venv
kserve-venv: $(KSERVE_VENV)/.installed ## the venv with kserve==0.21.0 the protocol cross-check runs in
$(KSERVE_VENV)/.installed:
	@test -d $(KSERVE_VENV) || $(PY) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install -q kserve==0.21.0
	@touch $@

# ---- image, launcher and Slurm ----
.PHONY: sys-deps
SYS_DEPS := openmpi-bin openssh-server openssh-client iproute2 shellcheck buildah mmdebstrap runc iptables conntrack ebtables ethtool socat busybox-static
IMAGE_TARGET ?= llmapi

sys-deps: ## install the apt packages the namespace, Slurm and test-image tests need (only those missing; needs root)
	@missing=""; for p in $(SYS_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "sys-deps: all present"; \
	elif [ "$$(id -u)" != 0 ]; then echo "sys-deps: missing$$missing and not root: the netns/slurm tests will skip"; \
	else echo "sys-deps: installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

image: $(STAMP) ## build the container image (IMAGE_TARGET=llmapi|engine; docker buildx, else podman/buildah)
	$(BIN)/dsv3ctl image build --target $(IMAGE_TARGET)

# --- local Kubernetes testbed (docs/testbed.md) -----------------------------------------------
TESTBED := $(BIN)/python -m dsv3ctl.adapters.testbed

REAL_NODES ?= $(or $(DSV3CTL_REAL_NODES),2)
testbed-up: $(STAMP) tools ## start the local cluster (etcd, apiserver, kcm, scheduler, kwok GPU nodes, LWS) + REAL_NODES real nodes (default 2; 0 = kwok only)
	@$(TESTBED) up --real-nodes $(REAL_NODES)

testbed-down: ## stop every testbed process by PID and undo the real nodes' host changes (logs stay in .run/testbed/logs)
	@$(TESTBED) down

testbed-status: ## health of each testbed component and the number of Ready nodes
	@$(TESTBED) status

testbed-env: ## print exports: eval "$(make -s testbed-env)" puts the pinned kubectl/helm first and sets KUBECONFIG
	@$(TESTBED) env
