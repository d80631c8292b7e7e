# Two entry points for a fresh Linux machine:
#   make run   set up, then open PianoMuse on the bundled defaults
#   make test  set up, then run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	@# torch first, pinned to the CPU wheel only when no torch is there (CUDA users keep theirs)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/pianomuse-tui

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV)
