# airgap: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

# A wheel installed by pip carries its modules compiled; an editable install compiles them at
# each start when PYTHONDONTWRITEBYTECODE is set (0.13 s a process here), which no user pays.
.PHONY: bytecode
bytecode: $(BIN)/airgap
	$(BIN)/python -m compileall -q shared client server bench >/dev/null

.PHONY: bench
bench: bytecode ## Codec, FTP, transfer and incremental benchmarks, figures beside their comparison (root; Docker; 4 GB /tmp, 6 GB shm).
	$(BIN)/python -m bench.codec
	$(BIN)/python -m bench.ftp
	$(BIN)/python -m bench.transfer
	$(BIN)/python -m bench.incremental

.PHONY: bench-ftp
bench-ftp: bytecode ## FTP benchmark only: airgap serve against vsftpd (root; ~6 GB in /dev/shm).
	$(BIN)/python -m bench.ftp

.PHONY: bench-transfer
bench-transfer: bytecode ## Transfer benchmark only: airgap send/fetch beside save+lftp+load (root; Docker).
	$(BIN)/python -m bench.transfer

.PHONY: bench-incremental
bench-incremental: bytecode ## Incremental benchmark only: a 10 MB update, thin send beside the book's flow (root; Docker).
	$(BIN)/python -m bench.incremental

# Container images. The build context is containers/; nothing is downloaded during the build.
DOCKER      ?= docker
BASE_IMAGE  ?= python:3.11-slim-bookworm
LOCAL_BASE  ?= airgap-base:bookworm
WHEELHOUSE  = containers/wheelhouse
VERSION     = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' shared/version.py)
SOURCES     = pyproject.toml $(shell find shared client server -name '*.py')

.PHONY: wheelhouse
wheelhouse: $(WHEELHOUSE)/.complete ## Wheels of airgap and its dependencies, for offline installs.

# setuptools builds in build/lib and never empties it: a module deleted or moved in the source
# would live on in the wheel, so that staging area goes first.
$(WHEELHOUSE)/.complete: $(BIN)/airgap $(SOURCES)
	rm -rf $(WHEELHOUSE) build/lib build/bdist.*
	$(BIN)/python -m pip wheel -q --wheel-dir $(WHEELHOUSE) .
	$(BIN)/python containers/check_wheel.py $(WHEELHOUSE)/airgap_ftp-$(VERSION)-*.whl
	touch $@

.PHONY: base-image
base-image: ## Python base image from Debian packages (debootstrap), for hosts without a registry.
	@$(DOCKER) image inspect $(LOCAL_BASE) >/dev/null 2>&1 \
	    && echo "$(LOCAL_BASE) is present" \
	    || containers/base/build $(LOCAL_BASE)

# The official base when the engine has it, else the debootstrap one (made once, then kept).
.PHONY: images
images: wheelhouse ## Build airgap-server and airgap-client images, offline (--network none).
	@base=$(BASE_IMAGE); \
	if ! $(DOCKER) image inspect $$base >/dev/null 2>&1; then \
	    echo "$$base is not present here; building on $(LOCAL_BASE)"; \
	    $(MAKE) --no-print-directory base-image && base=$(LOCAL_BASE); \
	fi; \
	for side in server client; do \
	    out=$$($(DOCKER) build -q --network none --build-arg BASE_IMAGE=$$base \
	        -t airgap-$$side:$(VERSION) -t airgap-$$side:latest \
	        -f containers/$$side/Dockerfile containers 2>&1) || { echo "$$out" >&2; exit 1; }; \
	    echo "built airgap-$$side:$(VERSION) on $$base"; \
	done; \
	$(DOCKER) images -q --filter dangling=true --filter label=airgap.stage=install \
	    | tail -n +2 | xargs -r $(DOCKER) rmi >/dev/null

.PHONY: demo
demo: $(BIN)/airgap ## The main job on this machine: appliance, send an image, remove, fetch, run.
	AIRGAP=$(BIN)/airgap bash demo/demo.sh

.PHONY: clean
clean: ## Remove the venv and build output.
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache $(WHEELHOUSE)
