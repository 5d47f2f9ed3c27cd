PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test faults lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/orch run examples/demo.yaml

test: $(STAMP)
	$(BIN)/pytest

faults: $(STAMP)
	$(BIN)/pytest tests/faults -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check orch workers beat tests
	$(BIN)/ruff format --check orch workers beat tests

typecheck: $(STAMP)
	$(BIN)/mypy orch workers beat

clean:
	rm -rf .orch .pytest_cache .mypy_cache .ruff_cache
