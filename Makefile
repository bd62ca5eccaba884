# Two entry points: `make demo` and `make test`. Both build .venv from the project's own
# files, so they work on a fresh machine with only Python 3.10+, pip and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck docs unit integration bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[vault,dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

test: $(VENV)/.installed lint typecheck docs
	$(BIN)/python -m pytest

# The API reference from the docstrings (docs/_build/html); any warning fails the build.
docs: $(VENV)/.installed
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy --strict src

unit: $(VENV)/.installed
	$(BIN)/python -m pytest tests/unit tests/vectors

integration: $(VENV)/.installed
	$(BIN)/python -m pytest -m integration

bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[vault,dev,bench]'
	$(BIN)/python bench/run.py
	$(BIN)/python bench/async_reads.py
	$(BIN)/python bench/encryption.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/parquet.py
	$(BIN)/python bench/columns.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/random_access.py

# 100,000 random mutations of ciphertexts, all of which must be rejected (minutes).
fuzz: $(VENV)/.installed
	$(BIN)/python bench/fuzz_envelope.py 100000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis docs/_build
