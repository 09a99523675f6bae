# The README's commands. Each one sets itself up on a fresh clone: it creates .venv,
# installs the package with the extras it needs (torch pinned through constraints.txt),
# then runs. Re-running skips the install unless pyproject.toml or constraints.txt changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: test test-all install clean

test: $(VENV)/.installed-test  ## run the default test suite (slow tests deselected)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test  ## every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
