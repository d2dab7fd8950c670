# fingpt: `make demo` runs the main job, `make test` the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Without an NVIDIA GPU, pin torch's CPU build rather than the multi-GB CUDA build pip would pick.
TORCH_PIN := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
# The corpora: ../shared/data beside a development checkout, else data/ (see README, Data).
FINGPT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export FINGPT_DATA_DIR

.PHONY: install test lint format demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PIN) -e '.[dev]'
	touch $@

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: install
	$(BIN)/fingpt-prepare data=all

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
