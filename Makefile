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

.PHONY: install demo test lint unit bench bench-env clean

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

# MLServer, a reference in the benchmark, lives in its own environment (its pins clash with ours).
MLSERVER_VENV ?= .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.bench-installed

bench-env: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): Makefile
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet "mlserver==1.7.1" "uvloop<0.21" onnxruntime numpy
	touch $(MLSERVER_STAMP)

# BENCH_ARGS: e.g. --quick, --models wide_mlp, --targets echo,shipyard (python -m benchmarks.run --help)
bench: install bench-env
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
