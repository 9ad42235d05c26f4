# The two quick-start targets. Each sets itself up: a .venv in the repo root, torch==2.13.0
# (CPU build) installed first so nothing pulls a CUDA build, then this project with its dev extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.p2pfed-installed

.PHONY: demo test lint imports typecheck unit setup mutants

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,studies,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/p2pfed demo

lint: $(STAMP)
	$(BIN)/ruff check .

# The layer contracts of pyproject.toml ([tool.importlinter]; docs/architecture.md).
imports: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers (pytest-xdist): most of the slow tests wait on real daemons' rounds and
# deadlines, so two at a time keep both cores busy (docs/benchmarks.md: suite time).
unit: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=30

test: lint imports typecheck unit

# Delete each registered protection in a scratch copy and check that its tests fail
# (tests/mutants/*.toml; see tests/mutation.py). Not part of `make test`: it runs the
# listed tests once per mutant.
mutants: $(STAMP)
	$(BIN)/python tests/mutation.py
