# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline checkers of deploy/ (checkov pins an older boto3, so they get a venv of their own)
TOOLS  := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml tests/plugins/rotator-example/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# the example plugin, a distribution of its own that the tests find by entry point
	$(BIN)/python -m pip install --quiet --no-deps -e tests/plugins/rotator-example
	touch $(STAMP)

$(TOOLS_STAMP): Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet 'checkov>=3.2' 'cfn-lint>=1.0' 'kubernetes-validate>=1.30'
	touch $(TOOLS_STAMP)

## demo: the embedded sandbox (emulated vendor, file store, a consumer, a full rotation)
demo: $(STAMP)
	$(BIN)/rotator sandbox

## test: lint, type-check and the whole suite, with real local servers
test: $(STAMP) $(TOOLS_STAMP)
	command -v chromium || (apt-get update && apt-get install -y chromium)  # the HTML report's screenshot test
	$(BIN)/ruff check rotator providers tests benchmarks
	$(BIN)/mypy
	$(BIN)/ruff format --check rotator providers tests benchmarks
	ROTATOR_TOOLS_BIN=$(CURDIR)/$(TOOLS)/bin ROTATOR_REQUIRE_OPENBAO=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check rotator providers tests benchmarks
	$(BIN)/ruff format --check rotator providers tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
