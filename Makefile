# moonwatch developer commands. `make run` and `make test` create the virtualenv when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= cluster.yml
PYTEST_ARGS ?=
SOAK_MINUTES ?= 30

.PHONY: run test lint typecheck layers unit bench chaos soak clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## run: start the five-server demo cluster on 127.0.0.1 until Ctrl-C
run: venv
	$(BIN)/moonwatch up --config $(CONFIG)

## test: lint, type-check, layer contracts, then the default test suite (a few chaos scenarios;
## the extended ones run in `make chaos`)
test: lint typecheck layers
	$(BIN)/python -m pytest -m "not chaos_extended" $(PYTEST_ARGS)

## chaos: every network-namespace chaos scenario (root; a few minutes each, ~15 min in all)
chaos: venv
	$(BIN)/python -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

## soak: random lab faults for SOAK_MINUTES (default 30) with every checker; prints a summary
soak: venv
	$(BIN)/python -m tests.chaos.soak --minutes $(SOAK_MINUTES) --json bench-results/soak.json

lint: venv
	$(BIN)/ruff check agent consensus healer app tests scripts
	$(BIN)/ruff format --check agent consensus healer app tests scripts

typecheck: venv
	$(BIN)/mypy

layers: venv
	$(BIN)/lint-imports

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

## bench: fail-over and flood benchmarks (print tables, write JSON to bench-results/)
bench: venv
	$(BIN)/python scripts/bench/leader_failover.py --trials 20 --json bench-results/leader_failover.json
	$(BIN)/python scripts/bench/failover.py --trials 20 --json bench-results/failover.json
	$(BIN)/python scripts/bench/voter_replacement.py --trials 5 --json bench-results/voters.json
	$(BIN)/python scripts/bench/flood.py --json bench-results/flood.json
	$(BIN)/python scripts/bench/app_load.py --json bench-results/app_load.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache var bench-results
