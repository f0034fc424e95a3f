# Two commands on a fresh machine:
#   make demo   installs everything into .venv and runs the demo on the embedded store
#   make test   installs everything into .venv and runs the whole test suite
#               (first making sure redis-server runs on 127.0.0.1:6379: scripts/services.sh)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install services demo test lint bench bench-redis

$(BIN)/conveyor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/conveyor

install: $(BIN)/conveyor

demo: install
	$(BIN)/conveyor demo

services:
	bash scripts/services.sh

test: services install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/sqlite_throughput.py
	$(BIN)/python benchmarks/sqlite_scale.py

bench-redis: install services
	$(BIN)/python benchmarks/throughput.py --url redis://127.0.0.1:6379/5
	$(BIN)/python benchmarks/redis_scale.py
	npm install --silent --prefix benchmarks/bullmq_memory
	$(BIN)/python benchmarks/redis_memory.py
