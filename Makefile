# Thin wrapper: bootstrap .venv, then call the real tools.
VENV ?= .venv
PYTHON ?= python3
# The CPU build on a laptop or CI; the worker image installs a CUDA build instead.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.easel-installed

.PHONY: run test test-fast screenshots lint format bench bench-throughput bench-batching bench-api clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[worker,upscale,dev]"
	touch $(STAMP)

# The local demo runs without authentication unless EASEL_AUTH_ENABLED says otherwise. With
# the built-in models it serves the trained demo-shapes model unless EASEL_DEFAULT_MODEL names
# another; a models file or folder gets its own default (docs/bring-your-models.md).
run: $(STAMP)
	EASEL_AUTH_ENABLED=$${EASEL_AUTH_ENABLED:-false} EASEL_LOG_FORMAT=$${EASEL_LOG_FORMAT:-text} \
	EASEL_DEFAULT_MODEL=$${EASEL_DEFAULT_MODEL:-$$( [ -n "$$EASEL_MODELS_FILE$$EASEL_MODELS_DIR" ] || echo demo-shapes)} \
	$(BIN)/easel run

# Lint, then the whole suite. PostgreSQL and Redis: the servers at EASEL_TEST_PG /
# EASEL_TEST_REDIS (127.0.0.1:5432 / :6379) when they answer, else private ones started
# from the installed postgresql and redis-server packages.
test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier alone: no server, no process of the stack (a minute or two).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# Retake the README's walkthrough pictures: the browser tests write them to
# tests/artifacts (never to tracked files); this copies them into docs/images.
PICTURES := form job gallery inpaint-form docs
screenshots: $(STAMP)
	rm -f $(PICTURES:%=tests/artifacts/%.png)
	$(BIN)/python -m pytest tests/e2e/test_browser.py $(PYTEST_ARGS)
	cp $(PICTURES:%=tests/artifacts/%.png) docs/images/

# mypy cannot follow setuptools' package-dir mapping (web/ installs as easel.web and so on), so it
# checks var/typecheck/easel: links that lay the package out as it installs (see [tool.mypy]).
TYPECHECK := var/typecheck/easel
PACKAGE_DIRS := shared web worker migrations

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	ln -s $(addprefix $(CURDIR)/,$(filter-out %/__pycache__,$(wildcard easel/*)) $(PACKAGE_DIRS)) $(TYPECHECK)/
	$(BIN)/python -m mypy

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
