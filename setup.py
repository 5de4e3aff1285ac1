"""Builds the native gRPC frontend (``serving_runtime/protocol/native/grpc_frontend.cc``) with the package.

Everything else about the package is in pyproject.toml. The extension is optional: it is built when a
C++ compiler, pkg-config and gRPC C++ (``pkg-config grpc++``; Debian/Ubuntu: libgrpc++-dev) are
here, and the build output says which way it went (``pip install -v`` shows it). Without them the
install still succeeds and the server serves gRPC on grpc.aio, warning once at start how to get
the native frontend (docs/serving.md, "The native gRPC frontend").

``SHIPYARD_NATIVE``: ``0`` never builds it; ``required`` fails the install when it cannot be built
(``make native`` and the container image use this); unset: build it when possible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NAME = "shipyard.serving_runtime.protocol._grpc_native"
SOURCE = "serving_runtime/protocol/native/grpc_frontend.cc"
HEADERS = sorted(str(p) for p in Path(SOURCE).parent.glob("*.h"))  # rebuilt when one changes
TO_GET_IT = (
    "to get it: install g++, pkg-config and gRPC C++ (Debian/Ubuntu: apt-get install g++ pkg-config "
    "libgrpc++-dev), then reinstall shipyard[serve]"
)


def _say(line: str) -> None:
    print(f"shipyard: {line}", file=sys.stderr, flush=True)


def _pkg_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.environ.get("PKG_CONFIG", "pkg-config"), *args], capture_output=True, text=True)


def _missing(compiler: list[str]) -> str | None:
    """Why the frontend cannot be built here, or None."""
    if shutil.which(compiler[0]) is None:
        return f"no C++ compiler ({compiler[0]} not found)"
    try:
        found = _pkg_config("--exists", "grpc++").returncode == 0
    except FileNotFoundError:
        return "pkg-config not found"
    if not found:
        return "gRPC C++ not found (pkg-config grpc++)"
    try:
        import pybind11  # noqa: F401  (a build requirement; missing only with --no-build-isolation)
    except ImportError:
        return "pybind11 is not installed in the build environment"
    return None


class BuildNative(build_ext):
    """build_ext that adds pybind11's and gRPC's flags, or skips the extension and says why."""

    def run(self) -> None:
        mode = os.environ.get("SHIPYARD_NATIVE", "auto")
        compiler = (os.environ.get("CXX") or "g++").split()
        reason = "SHIPYARD_NATIVE=0" if mode == "0" else _missing(compiler)
        if reason is not None:
            if mode == "required":
                raise SystemExit(f"shipyard: cannot build the native gRPC frontend: {reason}; {TO_GET_IT}")
            _say(f"the native gRPC frontend is NOT built ({reason}); gRPC will run on grpc.aio; {TO_GET_IT}")
            self.extensions = []
            return
        import pybind11

        cflags = _pkg_config("--cflags", "grpc++").stdout.split()
        libs = _pkg_config("--libs", "grpc++").stdout.split()
        for ext in self.extensions:
            ext.include_dirs.append(pybind11.get_include())
            ext.extra_compile_args += ["-O2", "-g0", "-std=c++17", "-fvisibility=hidden", *cflags]
            ext.extra_link_args += libs
            ext.optional = mode != "required"
        super().run()

    def build_extension(self, ext: Extension) -> None:
        target = Path(self.get_ext_fullpath(ext.name))
        if self._reuse_in_place_build(ext, target):
            return
        _say(f"building the native gRPC frontend ({SOURCE}; about half a minute)")
        try:
            super().build_extension(ext)
        except Exception:
            _say("the native gRPC frontend did NOT build (compiler errors above); gRPC will run on grpc.aio")
            raise
        _say(f"built the native gRPC frontend: {target.name}")

    def _reuse_in_place_build(self, ext: Extension, target: Path) -> bool:
        """An editable install copies an up-to-date ``make native`` build instead of compiling again."""
        if not getattr(self, "editable_mode", False):
            return False
        in_place = Path(SOURCE).parent.parent / target.name
        newest = max(Path(p).stat().st_mtime for p in [SOURCE, *HEADERS])
        if not in_place.exists() or in_place.stat().st_mtime < newest:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(in_place, target)
        _say(f"the native gRPC frontend is up to date: {in_place}")
        return True


setup(
    ext_modules=[Extension(NAME, [SOURCE], depends=HEADERS, language="c++", optional=True)],
    cmdclass={"build_ext": BuildNative},
)
