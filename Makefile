# Every target bootstraps its own virtualenv: a fresh machine needs only Python, pip, gcc and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: setup test lint structure demo bench bench-hot bench-instructions reliability clean

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
	$(BIN)/python scripts/check_structure.py

# Every module's length and every import cycle among them (all imports counted); exits 1 on a cycle.
structure: $(STAMP)
	$(BIN)/python scripts/check_structure.py

test: lint
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/affinity-mw demo --app app:app --app-dir examples/fastapi_tenants

# The whole reliability suite, slow scenarios included; its figures become the table in docs/reliability.md.
reliability: $(STAMP)
	rm -f bench/results/reliability.jsonl
	AFFINITY_RELIABILITY_OUT=$(CURDIR)/bench/results/reliability.jsonl \
		$(BIN)/python -m pytest -q -o addopts="-ra" -m reliability tests
	$(BIN)/python scripts/reliability_report.py bench/results/reliability.jsonl --write docs/reliability.md

# Every benchmark, bounded (about 8 minutes on 2 cores): the ring algorithms, the ASGI stack under asyncio+h11 and
# uvloop+httptools (bare, local, each transport, nginx), then the WSGI stack, then a websocket relayed against a
# direct one; raw results in bench/results/, from which the tables in docs/benchmarks.md are rewritten.
BENCH_RUN := --rounds 3 --duration 4 --warmup 1 --latency-duration 2 --idle-wait 5
bench: $(STAMP)
	bash bench/setup.sh --uvloop
	$(BIN)/python bench/ring_bench.py --json bench/results/ring.json
	$(BIN)/python bench/http_bench.py --no-ring --uvloop $(BENCH_RUN) --json bench/results/http.json
	$(BIN)/python bench/http_bench.py --wsgi $(BENCH_RUN) --json bench/results/http-wsgi.json
	$(BIN)/python bench/edge_bench.py --json bench/results/edge.json --write docs/benchmarks.md
	$(BIN)/python bench/report.py --write docs/benchmarks.md
	$(BIN)/python bench/ws_bench.py --json bench/results/ws.json --write docs/benchmarks.md
	$(MAKE) bench-hot

# Hot tenants on a real 3-node cluster, with and without bounded loads, side by side (about 1.5 minutes).
bench-hot: $(STAMP)
	$(BIN)/python bench/hot_tenants.py --json bench/results/hot_tenants.json --write docs/benchmarks.md

# Instructions per request under valgrind (about 7 minutes): the local path and the forward against bare with
# no noise from the machine; rewrites its block in docs/benchmarks.md.
bench-instructions: $(STAMP)
	bash bench/setup.sh --valgrind
	$(BIN)/python bench/instructions_bench.py --json bench/results/instructions.json --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
