# genloop: `make demo` runs the lifecycle on the embedded defaults, `make test` runs the tests.
# Both set up .venv/ first (pinned by requirements.lock), so they work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC stages call `genloop ...`: the venv's commands come first on PATH.
export PATH := $(BIN):$(PATH)
# No telemetry from anything this project starts.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: help setup demo test check docs browser postgres lint format bench up down clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv/ with the pinned dependencies and the genloop command

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	touch $@

demo: setup  ## run the lifecycle on the defaults (digits, VAE), serve the champion, say where to look
	$(BIN)/genloop flow lifecycle

# Test files run in parallel, each whole on one worker (its module-scoped servers started once), and
# every process's math on TEST_THREADS threads (GENLOOP_THREADS fixes the plan for the cores,
# models/cores.py): the same thread count in every run keeps the tests' weights bitwise repeatable.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
TEST_ENV = GENLOOP_THREADS=$(TEST_THREADS) OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
  OPENBLAS_NUM_THREADS=$(TEST_THREADS)
test: setup lint docs browser postgres  ## lint, the docs site, then the whole test suite (unit and end-to-end; TEST_WORKERS=2 in parallel)
	$(TEST_ENV) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

check: setup lint  ## the fast tier: lint and the unit tests (no servers, no end-to-end runs), in under 2 minutes
	$(TEST_ENV) $(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -q

docs: setup  ## build the documentation site into site/ (strict: a broken link or a missing page fails)
	$(BIN)/mkdocs build --strict --quiet

browser:  ## Debian's chromium for the web page test (apt-get, when run as root; else say how)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; }; } || \
	  echo "note: no /usr/bin/chromium (sudo apt-get install chromium); the browser test will be skipped"

postgres:  ## Debian's postgresql for the test of a study shared through PostgreSQL (apt-get, as root)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }; }; } || \
	  echo "note: no postgresql (sudo apt-get install postgresql); the PostgreSQL study test will be skipped"

lint: setup  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## benchmarks: side-by-side ratios
	$(BIN)/python bench/pipeline_noop.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/tune_pruning.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/serve.py  # needs a champion: run make demo first
	$(BIN)/python bench/flow_overhead.py  # needs a pipeline that has run: make demo first
	$(BIN)/python bench/sharing.py   # training and serving side by side, with the plan for the cores and without
	$(BIN)/python bench/startup.py   # each stage's fixed cost, a cached lifecycle flow beside Metaflow's run

# make up PORT=4300; not taken from the environment, where PORT often means something else
PORT = 4200
up: setup  ## start the local Prefect server (UI at http://127.0.0.1:$PORT, 4200 unless PORT=...), a worker, the deployments
	$(BIN)/genloop up --port $(PORT)

down:  ## stop the worker and the Prefect server
	$(BIN)/genloop down

clean:  ## remove the virtual environment and caches (not data/ or artifacts/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
