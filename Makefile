# `make test` goes from a bare machine to a full test run (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env test test-unit test-engine bench-select fixtures clean

env:  ## create/refresh .venv (seconds when nothing changed)
	VENV=$(VENV) bash scripts/bootstrap.sh

test: env  ## the whole suite
	$(PY) scripts/run_pytest.py $(PYTEST_ARGS)

test-unit: env  ## the fast tests only (no vLLM engine)
	$(PY) scripts/run_pytest.py -m "not engine" $(PYTEST_ARGS)

test-engine: env  ## the tests that start a real vLLM engine
	$(PY) scripts/run_pytest.py -m engine $(PYTEST_ARGS)

bench-select: env  ## time the selection kernel at real model sizes
	$(PY) benchmarks/select_bench.py

fixtures: env  ## regenerate the tiny random-weight models under tests/fixtures/models
	$(PY) scripts/make_fixtures.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
