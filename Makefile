PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install test test-all lint demo coco bench clean mutate

$(BIN)/captioner: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,meteor,cluster]'
	touch $(BIN)/captioner

install: $(BIN)/captioner

test: install
	$(BIN)/pytest -q

test-all: install
	$(BIN)/pytest -q -m ""

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: install
	$(BIN)/captioner demo

coco: install
	$(BIN)/captioner download

bench: install
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Mutation testing of the core (slow: not part of CI; see the README's "Tests" section).
mutate: install
	$(BIN)/pip install -q -e '.[mutate]'
	$(BIN)/python scripts/mutate.py
