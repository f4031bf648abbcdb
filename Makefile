# Two commands from a fresh clone: `make serve` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck check clean speech

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/vivavoce serve

# Real human speech for tests and benchmarks (from the pocketsphinx sdist; cached, not committed).
speech: $(STAMP)
	$(BIN)/python fixtures/fetch_speech.py

test: $(STAMP) speech
	$(BIN)/ruff check runtime media api tests
	$(BIN)/ruff format --check runtime media api tests
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check --fix runtime media api tests
	$(BIN)/ruff format runtime media api tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
