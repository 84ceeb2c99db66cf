# airgap: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/airgap: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install
install: $(BIN)/airgap ## Create .venv and install airgap with the dev extras.

.PHONY: test
test: $(BIN)/airgap ## Run the whole test suite (Docker tests need a running engine).
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(BIN)/airgap ## ruff and mypy --strict.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/typecheck && mkdir -p build/typecheck/airgap
	ln -s ../../../shared build/typecheck/airgap/shared
	ln -s ../../../client build/typecheck/airgap/client
	ln -s ../../../server build/typecheck/airgap/server
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p airgap.shared -p airgap.client -p airgap.server

.PHONY: bench
bench: $(BIN)/airgap ## Benchmarks, each figure beside its comparison (needs ~4 GB in /tmp).
	$(BIN)/python -m bench.codec

.PHONY: clean
clean: ## Remove the venv and build output.
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
