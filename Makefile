# Stalwart developer commands. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo demo-saga test lint typecheck unit bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m examples.order_demo

demo-saga: $(VENV)/.installed
	$(BIN)/python -m examples.saga_demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# PostgreSQL tests need the local cluster: start it when it is not accepting connections
# (where no cluster is installed, those tests skip locally and fail under CI=true).
test: lint typecheck
	@if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true; \
		pg_isready -q -h 127.0.0.1 -t 30 || true; \
	fi
	$(BIN)/python -m pytest -q

# The long chaos runs (the short versions run inside `make test`); prints the chaos table.
CHAOS_REPORT := .chaos/report.jsonl
chaos: $(STAMP)
	@rm -f $(CHAOS_REPORT)
	STALWART_CHAOS=long STALWART_CHAOS_REPORT=$(CURDIR)/$(CHAOS_REPORT) \
		$(BIN)/python -m pytest -q -m chaos tests/chaos -p no:cacheprovider --timeout 1800; \
		status=$$?; $(BIN)/python -m tests.chaos.report $(CHAOS_REPORT) && exit $$status

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench
	$(BIN)/python -m bench.step_floor

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
