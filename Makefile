PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := orch workers beat tests bench

.PHONY: demo test faults bench lint format typecheck install clean agent-host lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP) agent-host
	@if [ "$$(id -u)" = 0 ]; then chown $(AGENT_USER) examples/scratch; fi  # as root, agents run as orch-agent
	@$(BIN)/orch run examples/demo.yaml; code=$$?; \
	  echo; echo "orch is in $(CURDIR)/$(BIN). To type 'orch' in this shell: export PATH=\"$(CURDIR)/$(BIN):\$$PATH\""; \
	  echo "(or . $(BIN)/activate; add the export to ~/.bashrc to keep it). Your first plan: docs/first-plan.md"; \
	  exit $$code

test: $(STAMP) agent-host
	$(BIN)/pytest

# What agents need on this host: bubblewrap, their sandbox (Debian's package, installed with apt when missing),
# and, where orch runs as root, the unprivileged user they run as.
AGENT_USER := orch-agent
agent-host:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (the agents' sandbox) with apt"; \
	    apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }; \
	  else echo "bubblewrap is not installed: agents run without a sandbox (sudo apt-get install bubblewrap)"; fi; }
	@if [ "$$(id -u)" = 0 ] && ! id -u $(AGENT_USER) >/dev/null 2>&1; then \
	  useradd --system --no-create-home --shell /usr/sbin/nologin $(AGENT_USER) && echo "created user $(AGENT_USER)"; fi

# requirements.lock (the image installs from it, by hash) after a change of pyproject.toml's dependencies
lock:
	python3.12 -m venv /tmp/lockvenv && /tmp/lockvenv/bin/pip install -q pip-tools
	PIP_CONFIG_FILE=/dev/null /tmp/lockvenv/bin/pip-compile --allow-unsafe --build-deps-for=wheel --generate-hashes \
	  --no-emit-index-url --output-file=requirements.lock --strip-extras pyproject.toml

faults: $(STAMP)
	$(BIN)/pytest tests/faults -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench.run --size full --store both

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

# What `make lint` checks, fixed where ruff can (imports sorted, upgrades…), then formatted
format: $(STAMP)
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

# orch, workers and beat strictly; tests and bench relaxed (pyproject.toml's [[tool.mypy.overrides]])
typecheck: $(STAMP)
	$(BIN)/mypy $(SOURCES)

clean:
	rm -rf .orch .pytest_cache .mypy_cache .ruff_cache
