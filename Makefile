# Everything runs from a virtual environment this Makefile creates (.venv).
# Another interpreter, in its own environment: make test PYTHON=python3.12 VENV=.venv312
# A part of the suite: make test TESTS=tests/data
PYTHON ?= python3
VENV   ?= .venv
TESTS  ?=
BIN    := $(VENV)/bin

.PHONY: setup train check test bench bench-accelerator clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/.installed

# The main job: train the seed's MLP on the embedded MNIST with hand-written backprop.
train: setup
	$(BIN)/handgrad train

# Every registered VJP rule against jax.vjp, then the seed's scalar example by hand.
check: setup
	$(BIN)/handgrad check

test: setup
	@$(BIN)/python -c "import sys, jax, jaxlib; print(f'python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__} ($(VENV))')"
	$(BIN)/python -m pytest -q -n 2 $(TESTS)

bench: setup
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/engine.py --xla-cpu-scheduler memory
	$(BIN)/python bench/remat.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/eager.py
	$(BIN)/python bench/diagnostics.py
	$(BIN)/python bench/nonfinite.py
	$(BIN)/python bench/scale.py

# On a machine with an accelerator (jax with its plugin already installed, no network):
# the suite and the benchmarks, bounded in time, figures in device-named sections.
bench-accelerator:
	bash bench/accelerator.sh

clean:
	rm -rf .venv .venv312 $(VENV) runs .pytest_cache
