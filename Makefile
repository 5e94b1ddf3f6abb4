# Two entry points, each self-contained on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: train test bench-device venv clean

# Marker files record which extras are installed, so a second `make` is a no-op and editing
# pyproject.toml reinstalls.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.core: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.full: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[torch,test]'
	touch $@ $(VENV)/.core

venv: $(VENV)/.full

train: $(VENV)/.core
	$(PY) -m esper_jax.train

# Lint first (seconds; the configuration is in pyproject.toml), then two workers, one test file each at a time: the
# suite is dominated by single-threaded XLA compiles, and files share their compiled functions within a worker.
test: $(VENV)/.full
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadfile

# The accelerator-deciding benchmark rows (< 6 min on one H100/H200): bench/results/<device>-<date>/.
bench-device: $(VENV)/.full
	$(PY) -m bench --device-suite

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
