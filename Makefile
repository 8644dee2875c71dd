# Every target bootstraps its own virtualenv: a fresh machine needs only Python, pip, gcc and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: setup test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy affinity_mw

test: lint
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/affinity-mw demo --app app:app --app-dir examples/fastapi_tenants

bench: $(STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/http_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
