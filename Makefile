# Quick start: `make demo` (set up and run the demo), `make test` (set up and run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The local wheels of torch/torchvision; pinned first so no dependency pulls another torch.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-test container-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[serve]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/seglab demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q --durations=30

# Build the Dockerfile with podman and run the image as the README does (root, a Debian-like machine).
container-test: $(VENV)/.installed
	SEGLAB_COMMAND=$(BIN)/seglab bash scripts/container_test.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
