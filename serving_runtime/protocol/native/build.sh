#!/bin/sh
# Builds the native gRPC frontend next to native_grpc.py: build.sh PYTHON
# PYTHON: the interpreter that will import it (its headers and pybind11 must be installed).
# Needs g++ (or $CXX), pkg-config and gRPC C++ (Debian/Ubuntu: libgrpc++-dev).
set -eu
python=${1:?usage: build.sh PYTHON}
here=$(cd "$(dirname "$0")" && pwd)
suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
out="$here/../_grpc_native$suffix"
# shellcheck disable=SC2046  # the flags are meant to split
${CXX:-g++} -O2 -std=c++17 -shared -fPIC -fvisibility=hidden $("$python" -m pybind11 --includes) \
    "$here/grpc_frontend.cc" -o "$out" $(pkg-config --cflags --libs grpc++)
echo "built $out"
