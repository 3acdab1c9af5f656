PY ?= python3

.PHONY: install install-test test lint demo

install:
	$(PY) -m pip install -q torch==2.13.0 -e .

install-test:
	$(PY) -m pip install -q torch==2.13.0 -e ".[test]"

lint:
	$(PY) -m ruff check src tests benchmarks scripts

test: install-test lint
	$(PY) -m pytest -q tests
