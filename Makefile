# fingpt: `make demo` runs the main job, `make test` the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Without an NVIDIA GPU, pin torch's CPU build rather than the multi-GB CUDA build pip would pick.
TORCH_PIN := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
# The corpora: ../shared/data beside a development checkout, else data/ (see README, Data).
FINGPT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export FINGPT_DATA_DIR
# The demo trains on the local corpora when they are there, else on calls streamed from the Hub.
DEMO_DATA ?= $(if $(wildcard $(FINGPT_DATA_DIR)/ectsum/train.parquet),all,hf_sp500)
API_PORT ?= 8000
UI_PORT ?= 8501

.PHONY: install test lint format demo ui ui-check chromium clean

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

# The main job: prepare, train experiment=cpu_demo and export it to models/demo (once; RETRAIN=1
# trains again), then serve that model and open the page. Ctrl-C stops both.
DEMO_MODEL := $(or $(FINGPT_MODELS_DIR),models)/demo
demo: install
	@if [ -n "$(RETRAIN)" ] || [ ! -e $(DEMO_MODEL)/card.json ]; then \
		$(BIN)/python train.py experiment=cpu_demo data=$(DEMO_DATA) export.name=demo; \
	else \
		echo "$(DEMO_MODEL) was trained before (make demo RETRAIN=1 trains a new one)."; \
	fi
	@echo "Serving $(DEMO_MODEL), the model make demo trained (its val/bpb and steps: $(DEMO_MODEL)/card.json)."
	@$(BIN)/fingpt-serve --model $(DEMO_MODEL) --port $(API_PORT) & server=$$!; \
	FINGPT_API_URL=http://127.0.0.1:$(API_PORT) $(BIN)/fingpt-ui --server.port $(UI_PORT) \
		--server.address 127.0.0.1 --server.headless true & page=$$!; \
	trap 'kill $$server $$page 2>/dev/null; wait; echo; echo "fingpt demo stopped."; exit 0' INT TERM; \
	sleep 3; echo; echo "fingpt is up: open http://127.0.0.1:$(UI_PORT)  (API: http://127.0.0.1:$(API_PORT)/docs)  Ctrl-C stops both."; \
	wait

# The page alone, against a server already running (fingpt-serve).
ui: install
	$(BIN)/fingpt-ui --server.port $(UI_PORT)

# The page in a real headless Chromium: generates once, saves ui-screenshot.png to look at.
ui-check: install chromium
	FINGPT_SCREENSHOT=$(CURDIR)/ui-screenshot.png $(BIN)/pytest -q -s tests/ui/test_browser.py

# Debian's Chromium and its driver, for the browser test (skipped when they are absent).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
