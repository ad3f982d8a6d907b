# Set-up and entry points. `make train` and `make test` create .venv, install requirements.txt and the project
# itself (`pip install -e .`, so `tools/` and `experiments/` import `pcl` from anywhere) first.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# the quick CPU schedule of `make train` (the command line's defaults are the official 200 epochs / 20 warmup)
TRAIN_ARGS ?= --epochs 6 --warmup-epochs 2

.PHONY: venv train test test-all lint bench-estep gpu-check clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

# The project itself, editable. A .venv that is a symlink to another checkout's environment is shared between
# checkouts: it is left alone (tests and `python main_pcl.py` find `pcl` from the repository root anyway).
$(VENV)/.editable: $(VENV)/.installed pyproject.toml
	if [ ! -L $(VENV) ]; then $(VENV)/bin/pip install -q -e .; fi
	touch $@

venv: $(VENV)/.editable

## Train on the bundled CIFAR-10 subset with the CPU-friendly defaults (extra flags: make train ARGS="...").
train: venv
	$(PY) main_pcl.py $(TRAIN_ARGS) $(ARGS)

## Fast test suite (CI runs this): everything but the tests marked slow.
test: venv
	$(PY) -m pytest -q -m "not slow"

## Everything, including the slow tests (the two-node torchrun tests, minutes each): run before every submission.
test-all: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

## Streamed E-step benchmark (figures in docs/performance.md).
bench-estep: venv
	$(PY) tools/bench_estep.py --n 100000 --k 1000 --dim 128 --work-dir bench/estep --compare

## One-shot CUDA machine check (docs/performance.md, "GPU check"): make gpu-check DATA=cifar10-jpg.tar.gz
## (without a GPU: one line, exit 0). `python tools/gpu_check.py --dry-run` prints the plan.
## It runs with the machine's python (GPU_PY, whose CUDA torch it keeps) and installs what else it lacks.
DATA ?=
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) tools/gpu_check.py $(DATA)

clean:
	rm -rf runs bench data/.cache .pytest_cache .ruff_cache
