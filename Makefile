# Two commands on a fresh machine:
#   make demo   installs everything into .venv and runs the demo on the embedded store
#   make test   installs everything into .venv and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install demo test lint bench

$(BIN)/conveyor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/conveyor

install: $(BIN)/conveyor

demo: install
	$(BIN)/conveyor demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/sqlite_throughput.py
	$(BIN)/python benchmarks/sqlite_scale.py
