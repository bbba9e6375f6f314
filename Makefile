# make run  : the whole stack in the foreground (Redis, gunicorn, rq workers); Ctrl-C stops it all
# make test : the whole test suite, real Redis servers included
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.test-stamp
PYTEST_ARGS ?=
# The suite runs in 3 processes (pytest-xdist), each test file in one of them: most of its time is
# waiting on real servers, not CPU. JOBS=0 runs it in this process alone.
JOBS ?= 3
XDIST := $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile)

.PHONY: install run test test-fast lint repeat clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make run` installs what running needs (a regular install: setuptools prints notices for every
# editable one); it runs this checkout's code all the same (python -m, and PYTHONPATH for the
# processes it starts). `make test` installs editable, with the test toolchain.
$(RUN_STAMP): setup.cfg pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet .
	touch $(RUN_STAMP)

$(TEST_STAMP): setup.cfg pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP) $(RUN_STAMP)

install: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m scripts.cli run

test: $(TEST_STAMP)
	$(BIN)/ruff check app workers scripts tests
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# Flake hunting: make repeat N=20 LOAD=2 TESTS="tests/faults -k sqlite" (failures per test)
N ?= 10
LOAD ?= 0
TESTS ?= -m slow
repeat: $(TEST_STAMP)
	$(BIN)/python -m tests.repeat -n $(N) --load $(LOAD) -- $(TESTS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check app workers scripts tests

clean:
	rm -rf $(VENV) build *.egg-info
