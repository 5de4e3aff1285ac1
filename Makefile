# shipyard: every set-up step lives here, so a fresh machine needs only Python 3.11 and make.
#   make demo    create/update .venv, then run the main job on the embedded default
#   make test    create/update .venv, lint (ruff, mypy), run the whole test suite
#   make bench   the side-by-side serving benchmark (benchmarks/README.md)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU build by default. On this kind of machine pip takes torch==2.13.0+cpu from local
# disk. GPU users: make install TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= serve,pipeline,dev
STAMP := $(VENV)/.shipyard-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint unit bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: install
	$(BIN)/shipyard demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# kserve's and tritonclient's gRPC protos share the `inference` package and cannot be imported into
# one process, so tests that import the kserve SDK (marker kserve_sdk) run in a second session.
unit: install
	$(BIN)/python -m pytest -m "not kserve_sdk" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m kserve_sdk $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test: lint unit

bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
