# AIM serving. `make serve` and `make test` each bootstrap .venv idempotently.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bootstrapped
# The CPU wheel of torch that machines without a GPU take first, so that the open range in
# pyproject.toml is already satisfied and pip does not pull a multi-GB CUDA build.
CPU_TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: bootstrap serve test test-unit lint typecheck check bench clean

bootstrap: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "no GPU found: installing the CPU build of torch first ($(CPU_TORCH))"; \
		$(BIN)/python -m pip install -q "$(CPU_TORCH)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev,llm]" -e clients/python
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/aim serve --demo --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

lint: $(STAMP)
	$(BIN)/ruff check service tests bench scripts clients
	$(BIN)/ruff format --check service tests bench scripts clients

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

bench: $(STAMP)
	$(BIN)/python bench/modulation.py
	$(BIN)/python bench/compare_servers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
