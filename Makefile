# underlay — the two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
# two pytest workers (CI has two cores; much of a test's time is spent waiting on servers and
# jobs); each worker gets its own PostgreSQL database. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast lint bench bench-serving bench-tools clean services mutation

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[ml]'
	@touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/underlay demo

services:
	@bash scripts/ensure-services.sh

test: $(STAMP) services
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not postgres and not s3 and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src/underlay

# Mutation testing (slow: not part of `make test`). One module: make mutation MODULE=identity
# (add MUTATION_ARGS=--survivors to test only the last run's survivors again)
MODULE ?=
mutation: $(STAMP) services
	$(PY) scripts/mutation.py $(MODULE) $(MUTATION_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/blobs.py
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/jobs.py
	$(PY) benchmarks/scheduler.py
	$(PY) benchmarks/ui.py

# wrk and the peers' own virtual environments (MLflow, MLServer, uvicorn[standard])
bench-tools:
	@bash scripts/ensure-bench-tools.sh

bench-serving: $(STAMP) bench-tools
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/api_overhead.py
	$(PY) benchmarks/replica_hop.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
