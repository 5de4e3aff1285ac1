#!/bin/sh
# Builds the native gRPC frontend next to native_grpc.py: build.sh PYTHON
# PYTHON: the interpreter that will import it (setuptools and pybind11 must be installed).
# Needs g++ (or $CXX), pkg-config and gRPC C++ (Debian/Ubuntu: libgrpc++-dev). The compiler flags
# live in setup.py, which `pip install .` runs too; SHIPYARD_NATIVE=required makes a missing
# dependency an error here instead of a skipped build.
set -eu
python=${1:?usage: build.sh PYTHON}
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
SHIPYARD_NATIVE=required "$python" setup.py --quiet build_ext --inplace
