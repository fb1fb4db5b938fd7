# Every workflow of agentrun-operator. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STATE ?= .local
KUBECONFIG_LOCAL := $(STATE)/kubeconfig
IMAGE ?= agentrun-operator:dev
KIND_CLUSTER ?= agentrun
PYTEST_ARGS ?= -n 2
# One test at a time: the kind suite reconfigures the one operator release it shares.
E2E_KIND_ARGS ?=

.PHONY: help
help: ## List the targets, one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with the package and its dev tools

.PHONY: control-plane
control-plane: ## Build kube-apiserver, kube-controller-manager, kubectl, etcd, helm into bin/ (cached)
	@bash hack/build-control-plane.sh

.PHONY: cluster-up
cluster-up: install control-plane ## Start a local control plane with a process-kubelet; kubeconfig in .local/
	@LOCALCLUSTER_STATE=$(STATE) bash hack/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local control plane and every process it started
	@LOCALCLUSTER_STATE=$(STATE) bash hack/cluster-down.sh

.PHONY: crds
crds: install ## Generate the CRD from the API models into crds/ and the chart
	$(PY) -m agentrun.crd crds/agentrun.dev_agentruns.yaml charts/agentrun-operator/crds/agentrun.dev_agentruns.yaml README.md

.PHONY: lint
lint: install ## ruff, mypy strict, import-linter contracts, helm lint, hadolint
	$(VENV)/bin/ruff check operator tests hack
	$(VENV)/bin/ruff format --check operator tests hack
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict tests hack/localcluster hack/demo.py hack/bench.py
	$(VENV)/bin/lint-imports
	@if [ -x bin/helm ]; then bin/helm lint --strict charts/agentrun-operator; else echo "helm lint skipped: run make control-plane first"; exit 1; fi
	$(VENV)/bin/hadolint Dockerfile

.PHONY: test
test: install control-plane ## Run every test: unit, and end to end on a local control plane
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: demo
demo: install control-plane ## The main job end to end: operator via Helm, a run that asks for approval
	@$(PY) hack/demo.py up --state $(STATE)

.PHONY: demo-down
demo-down: ## Stop what make demo started
	@$(PY) hack/demo.py down --state $(STATE) 2>/dev/null || LOCALCLUSTER_STATE=$(STATE) bash hack/cluster-down.sh

.PHONY: bench
bench: install control-plane ## Print the benchmark figures (takes minutes)
	$(PY) hack/bench.py

.PHONY: image
image: ## Build the operator and runner image (needs Docker)
	docker build -t $(IMAGE) .

.PHONY: kind-up
kind-up: ## Create a kind cluster (needs Docker and kind)
	kind create cluster --name $(KIND_CLUSTER)

.PHONY: kind-deploy
kind-deploy: image ## Load the image into kind and helm install the chart
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	helm upgrade --install agentrun charts/agentrun-operator --namespace agentrun-system --create-namespace \
	  --set image.repository=$(firstword $(subst :, ,$(IMAGE))) --set image.tag=$(lastword $(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never

.PHONY: e2e-kind
e2e-kind: install ## The end-to-end suite against the kind cluster of kind-deploy
	@mkdir -p $(STATE)
	kind get kubeconfig --name $(KIND_CLUSTER) > $(STATE)/kind.kubeconfig
	AGENTRUN_E2E_KUBECONFIG=$(STATE)/kind.kubeconfig AGENTRUN_E2E_IMAGE=$(IMAGE) \
	AGENTRUN_E2E_HOST=$$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.') \
	  $(PY) -m pytest tests/e2e $(E2E_KIND_ARGS)
