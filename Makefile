# Two entry points: `make sweep` (install, then run the default sweep) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: sweep test lint install clean-venv cluster-test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

sweep: $(STAMP)
	$(PY) -m raysimnpo.sweep tofu $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

# A fake multi-node autoscaling Ray cluster on this machine (cluster/local-autoscaling.yaml): a short
# sweep submitted with `ray job submit` makes it add worker nodes, which it removes when idle.
# Writes runs/cluster-test/{nodes.csv,summary.json}. Heavy (~10 min on 2 cores): not part of `make test`.
cluster-test: $(STAMP)
	$(PY) cluster/local_autoscaling.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
