# medddpm: `make demo` shows the whole tool on a built-in cohort; `make test` runs the test suite.
# Both create .venv when missing. torch==2.13.0 is installed first, on its own: a plain `torch`
# requirement on a machine with none pulls a CUDA build of several GB.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test test-slow lint format demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check medddpm tests benchmarks examples docs
	$(BIN)/ruff format --check medddpm tests benchmarks examples docs

format: $(STAMP)
	$(BIN)/ruff format medddpm tests benchmarks examples docs
	$(BIN)/ruff check --fix medddpm tests benchmarks examples docs

# DEMO_ARGS: more options for medddpm demo, e.g. make demo DEMO_ARGS="--minutes 30 --device cuda".
# A new `make demo` replaces the previous demo's folders in medddpm-demo/.
demo: $(STAMP)
	$(BIN)/medddpm demo --overwrite $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
