# Two entry points: `make sweep` (install, then run the default sweep) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: sweep test lint install clean-venv cluster-test gpu-check

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

# On a machine with NVIDIA GPUs, before a long sweep: GPU memory against the resource plan, FSDP2 on
# NCCL in bf16 over every visible GPU against the unsharded paths, Ray Train 1 GPU vs all, a 2-trial
# smollm2-135m sweep; writes perf/results/gpu_check.json. Without a GPU it says so and exits 1.
gpu-check: $(STAMP)
	$(PY) perf/gpu_check.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
