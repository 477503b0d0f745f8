# Thin wrapper: bootstrap .venv, then call the real tools.
VENV ?= .venv
PYTHON ?= python3
# The CPU build on a laptop or CI; the worker image installs a CUDA build instead.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.easel-installed

.PHONY: run test lint format bench bench-throughput bench-batching bench-api clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[worker,dev]"
	touch $(STAMP)

# The local demo runs without authentication unless EASEL_AUTH_ENABLED says otherwise.
run: $(STAMP)
	EASEL_AUTH_ENABLED=$${EASEL_AUTH_ENABLED:-false} EASEL_LOG_FORMAT=$${EASEL_LOG_FORMAT:-text} $(BIN)/easel run

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# `make bench` runs the chaos run; BENCH=throughput|batching|api (or `make bench-api`) another.
BENCH ?= chaos
bench: $(STAMP)
	$(BIN)/python -m bench.$(BENCH) $(BENCH_ARGS)

bench-throughput bench-batching bench-api: $(STAMP)
	$(BIN)/python -m bench.$(@:bench-%=%) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
