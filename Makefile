# Two entry points for a fresh Linux machine:
#   make run        set up, then open PianoMuse on the bundled defaults
#   make test       set up, then run the whole test suite (about 10 minutes on 2 CPU cores)
#   make test-fast  the quick loop: every test not marked slow
# torch: TORCH=auto (default) picks the CUDA build where nvidia-smi lists a GPU, else the CPU build
# from PyTorch's CPU index (falling back to pip's own index when that one cannot be reached);
# TORCH=cpu or TORCH=cuda chooses. A torch already in the venv is kept.
PY ?= python3
TORCH ?= auto
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	@# torch==2.13.0 first, the build that fits this machine, only when the venv has none
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python scripts/install_torch.py --torch $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/pianomuse-tui

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV)
