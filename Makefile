PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test faults bench lint typecheck install clean

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

bench: $(STAMP)
	$(BIN)/python -m bench.run --size full --store both

lint: $(STAMP)
	$(BIN)/ruff check orch workers beat bench tests
	$(BIN)/ruff format --check orch workers beat bench tests

typecheck: $(STAMP)
	$(BIN)/mypy orch workers beat

clean:
	rm -rf .orch .pytest_cache .mypy_cache .ruff_cache
