# Quick start: `make demo` (train DMRNet on Handwritten, print every combination) and `make test`.
# Both create the virtual environment on first use: torch==2.13.0 first (a CPU build; an
# unpinned torch would pull a multi-GB CUDA build), then the pinned rest from requirements.lock.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Use the shared data mirror when it is there; otherwise dmrnet downloads into its cache.
ifneq ($(wildcard ../shared/data),)
export DMRNET_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test lint format bench clean

$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	rm -rf runs/demo
	$(BIN)/dmrnet train handwritten/dmrnet --run-dir runs/demo

test: $(BIN)/.installed
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(BIN)/.installed
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

bench: $(BIN)/.installed
	$(BIN)/dmrnet bench standard --out runs/bench/standard --report BENCHMARKS.md --figures docs/figures/benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
