# The README's commands. Each one sets itself up on a fresh clone: it creates .venv,
# installs the package with the extras it needs (torch pinned through constraints.txt),
# then runs. Re-running skips the install unless pyproject.toml or constraints.txt changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: demo test test-all lab install clean

# dvc runs each stage's command in a shell: put the venv first so `python -m papermill`
# and the notebooks' kernel are the venv's
RUN := PATH="$(abspath $(BIN)):$$PATH"

demo: $(VENV)/.installed-pipeline  ## the pipeline end to end on the built-in synthetic demo (CPU, minutes)
	$(RUN) $(BIN)/dvc repro figures@demo
	@echo "Done: reports/demo/ (metrics.json, figures/table1.md|csv, */*.png). Try: $(BIN)/dvc metrics show"

lab: $(VENV)/.installed-lab  ## JupyterLab on the notebooks
	$(RUN) $(BIN)/jupyter lab notebooks/

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

$(VENV)/.installed-pipeline: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[pipeline]"
	touch $@

$(VENV)/.installed-lab: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet -c constraints.txt -e ".[lab]"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
