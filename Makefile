# Two commands from a fresh clone: `make serve` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-postgres lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/vivavoce serve

test: $(STAMP)
	$(BIN)/ruff check runtime media api tests
	$(BIN)/ruff format --check runtime media api tests
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadfile

# The suite again with PostgreSQL as the store (a database per test server, on VIVAVOCE_TEST_POSTGRES, default
# postgresql://postgres@127.0.0.1:5432). tests/media never opens a database: it runs in `make test` only.
test-postgres: $(STAMP)
	VIVAVOCE_TEST_DATABASE=postgresql $(BIN)/pytest -n 2 --dist loadfile tests/runtime tests/api tests/browser

lint: $(STAMP)
	$(BIN)/ruff check --fix runtime media api tests
	$(BIN)/ruff format runtime media api tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
