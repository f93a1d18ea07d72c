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

.PHONY: bootstrap system-deps serve test test-unit lint typecheck check bench compose-smoke clean

bootstrap: $(STAMP)

# Servers the integration tests run for real (Debian packages): Prometheus scrapes /metrics,
# Redis holds shared state, nginx balances replicas; curl runs the README's requests
# (tests/integration/test_readme.py). Installed once when missing, so that `make test` on a
# fresh machine needs nothing else.
SYSTEM_BINARIES := prometheus redis-server nginx curl
SYSTEM_PACKAGES := prometheus redis-server nginx curl
system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do \
		command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$b"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages for the integration tests:$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(SYSTEM_PACKAGES) >/dev/null || { echo "could not install:$$missing (Debian packages $(SYSTEM_PACKAGES))"; exit 1; }; \
	fi

# pip and setuptools talk a lot (build-backend notes on every editable install): their output
# goes to $(LOG), and only a failure shows its last lines, so that a first `make test` says what
# it does in a few lines.
LOG := $(VENV)/bootstrap.log
QUIET = >>$(LOG) 2>&1 || { echo "bootstrap failed; the last lines of $(LOG):"; tail -n 40 $(LOG); exit 1; }

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@echo "bootstrap: Python environment in $(VENV) (pip's output: $(LOG))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@: > $(LOG)
	@$(BIN)/python -m pip install --upgrade pip $(QUIET)
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "bootstrap: no GPU found: installing the CPU build of torch first ($(CPU_TORCH))"; \
		$(BIN)/python -m pip install "$(CPU_TORCH)" $(QUIET); \
	fi
	@echo "bootstrap: installing aim-serving, its client and their dependencies (minutes the first time)"
	@$(BIN)/python -m pip install -e ".[dev,llm]" -e clients/python $(QUIET)
	@touch $(STAMP)
	@echo "bootstrap: done; \`$(BIN)/aim --help\` lists the commands"

serve: $(STAMP)
	$(BIN)/aim serve --demo --host $(HOST) --port $(PORT)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

lint: $(STAMP)
	$(BIN)/ruff check service tests bench scripts clients
	$(BIN)/ruff format --check service tests bench scripts clients

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

# The container stack end to end (docs/DEPLOY.md "Smoke test"): needs root on Debian; installs
# and starts a Docker engine itself, builds every image offline and runs `docker compose up`.
compose-smoke: $(STAMP)
	PYTHON=$(BIN)/python scripts/compose-smoke.sh

bench: $(STAMP)
	$(BIN)/python bench/modulation.py
	$(BIN)/python bench/compare_servers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
