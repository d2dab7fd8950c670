# fingpt: `make demo` runs the main job, `make test` the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# torch without an NVIDIA GPU (README, Install): pinned by constraints-cpu.txt, taken from
# PyTorch's CPU wheel index where it answers; with a GPU, pip takes PyPI's CUDA build.
GPU := $(shell command -v nvidia-smi 2>/dev/null)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH = $(if $(GPU),,-c constraints-cpu.txt $(if $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null && echo up),--extra-index-url $(TORCH_CPU_INDEX)))
# The corpora: ../shared/data beside a development checkout, else data/ (README, Data).
FINGPT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export FINGPT_DATA_DIR
# The demo trains on ectsum (fetched if missing), pooled with sp500_sample where that is there too.
DEMO_DATA ?= $(if $(wildcard $(FINGPT_DATA_DIR)/sp500_sample/input.txt),all,ectsum)
DEMO_MODEL := $(or $(FINGPT_MODELS_DIR),models)/demo
API_PORT ?= 8000
UI_PORT ?= 8501

.PHONY: install install-dev data test lint format demo ui ui-check chromium clean

# What the demo runs (training, serving, the page); the tests' tools on top of it.
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH) -e '.[serve,ui]'
	touch $@

# llama-cpp-python builds from source (pip keeps the wheel); CMAKE_ARGS=-DGGML_CUDA=on for a GPU
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
$(VENV)/.installed-dev: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install --quiet $(TORCH) -e '.[dev]'
	touch $@ $(VENV)/.installed

# Every corpus that has a download (ECTSum, MAEC, Earnings-21/22) into FINGPT_DATA_DIR.
data: install
	$(BIN)/fingpt-data download ectsum maec earnings21_22

test: install-dev
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The main job: fetch ectsum, train experiment=cpu_demo and export it to models/demo (once;
# RETRAIN=1 trains again), then serve that model and open the page, announced when both are up.
demo: install
	@$(BIN)/fingpt-data download ectsum
	@if [ -n "$(RETRAIN)" ] || [ ! -e $(DEMO_MODEL)/card.json ]; then \
		$(BIN)/python train.py experiment=cpu_demo data=$(DEMO_DATA) export.name=demo; \
	else \
		echo "$(DEMO_MODEL) was trained before (make demo RETRAIN=1 trains a new one)."; \
	fi
	@echo "Serving $(DEMO_MODEL), the model make demo trained (its val/bpb and steps: $(DEMO_MODEL)/card.json)."
	@$(BIN)/python -m ui.demo --model $(DEMO_MODEL) --api-port $(API_PORT) --ui-port $(UI_PORT)

# The page alone, against a server already running (fingpt-serve).
ui: install
	$(BIN)/fingpt-ui --server.port $(UI_PORT)

# The page in a real headless Chromium: generates once, saves ui-screenshot.png to look at.
ui-check: install-dev chromium
	FINGPT_SCREENSHOT=$(CURDIR)/ui-screenshot.png $(BIN)/pytest -q -s tests/ui/test_browser.py

# Debian's Chromium and its driver, for the browser test (which CI=true requires).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
