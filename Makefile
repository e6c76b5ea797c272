# Two entry points for a fresh machine: `make run` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[all,test]"
	touch $@

run: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/colzero train quickstart --output runs/quickstart

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

# ruff (rules in pyproject.toml) and mypy on the public API (scope: [tool.mypy] in pyproject.toml)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks scripts && $(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(PY) -m mypy
