# make run  : the whole stack in the foreground (Redis, gunicorn, rq workers); Ctrl-C stops it all
# make test : the whole test suite, real Redis servers included
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint repeat clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/arzani run

test: $(STAMP)
	$(BIN)/ruff check app workers scripts tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Flake hunting: make repeat N=20 LOAD=2 TESTS="tests/faults -k sqlite" (failures per test)
N ?= 10
LOAD ?= 0
TESTS ?= -m slow
repeat: $(STAMP)
	$(BIN)/python -m tests.repeat -n $(N) --load $(LOAD) -- $(TESTS)

lint: $(STAMP)
	$(BIN)/ruff check app workers scripts tests

clean:
	rm -rf $(VENV) build *.egg-info
