"""What a user gets from ``pip install shipyard[serve]`` out of the sdist (setup.py, issue 21).

The sdist is built with ``python -m build`` and installed with pip into two fresh venvs: one where
gRPC C++ is found (the native gRPC frontend is compiled and serves), one where ``pkg-config`` finds
no gRPC C++ (the install succeeds, the server warns once at start and serves gRPC on grpc.aio).
The venvs reuse this environment's packages for the dependencies (a .pth file, ``--no-deps``,
``--no-build-isolation``) so nothing is downloaded; the package itself, its extension included,
comes only from the sdist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import SIMPLE_CONFIG, ServerProcess, simple_onnx, start_server, write_model

ROOT = Path(__file__).resolve().parents[2]
EXT = "shipyard.serving_runtime.protocol._grpc_native"

pytestmark = pytest.mark.slow


def _grpc_cxx_reason() -> str | None:
    if shutil.which(os.environ.get("CXX", "g++")) is None or shutil.which("pkg-config") is None:
        return "no C++ compiler or pkg-config (make native-deps installs them)"
    if subprocess.run(["pkg-config", "--exists", "grpc++"], check=False).returncode != 0:
        return "gRPC C++ is not installed (make native-deps: Debian's libgrpc++-dev)"
    return None


@dataclass
class Install:
    python: Path
    output: str  # what pip printed (-v: the build backend's lines too)


def _sdist(out: Path) -> Path:
    # --skip-dependency-check: the build requirements come from this environment (as with pip's
    # --no-build-isolation), whatever setuptools version it has
    command = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check"]
    subprocess.run([*command, "-o", str(out), str(ROOT)], check=True, capture_output=True, timeout=120)
    (sdist,) = out.glob("shipyard-*.tar.gz")
    return sdist


def _install(where: Path, sdist: Path, env: dict[str, str]) -> Install:
    """A fresh venv with ``shipyard[serve]`` from ``sdist``; dependencies seen through a .pth file."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    base = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(purelib) / "_deps_from_test_env.pth").write_text("\n".join(dict.fromkeys([*ours, *base])) + "\n")
    result = subprocess.run(
        [python, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         f"shipyard[serve] @ {sdist.as_uri()}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd=where, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return Install(python, output)


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Install]:
    """ "native": installed where gRPC C++ is found; "absent": where pkg-config finds none."""
    if (reason := _grpc_cxx_reason()) is not None:
        pytest.skip(reason)
    pytest.importorskip("build", reason="python -m build comes with the dev extra")
    tmp = tmp_path_factory.mktemp("pip")
    sdist = _sdist(tmp / "dist")
    no_grpc = {"PKG_CONFIG_LIBDIR": str(tmp / "no-pc-files"), "PKG_CONFIG_PATH": ""}
    with ThreadPoolExecutor(2) as pool:
        native = pool.submit(_install, tmp / "venv-native", sdist, {})
        absent = pool.submit(_install, tmp / "venv-absent", sdist, no_grpc)
        return {"native": native.result(), "absent": absent.result()}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "simple", {1: simple_onnx(0.0)}, SIMPLE_CONFIG)
    return repo


@pytest.fixture
def server(
    request: pytest.FixtureRequest, installs: dict[str, Install], repository: Path, tmp_path: Path
) -> Iterator[ServerProcess]:
    python = str(installs[request.param].python)
    served = start_server(tmp_path, [repository], wait_models=("simple",), python=python)
    yield served
    served.stop()


def _infer(server: ServerProcess) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    with grpcclient.InferenceServerClient(server.grpc_host) as client:
        inputs = [grpcclient.InferInput(name, [1, 16], "FP32") for name in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(x)
        result = client.infer("simple", inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), x + x)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), x - x)


def _module_file(python: Path) -> subprocess.CompletedProcess[str]:
    code = f"import importlib; print(importlib.import_module({EXT!r}).__file__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/", check=False)


def test_the_sdist_builds_the_native_frontend_and_says_so(installs: dict[str, Install]) -> None:
    install = installs["native"]
    assert "shipyard: built the native gRPC frontend" in install.output
    loaded = _module_file(install.python)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().startswith(str(install.python.parents[1])), loaded.stdout  # the venv's own copy


def test_without_grpc_cxx_the_install_succeeds_and_says_what_to_install(installs: dict[str, Install]) -> None:
    install = installs["absent"]
    assert "shipyard: the native gRPC frontend is NOT built (gRPC C++ not found (pkg-config grpc++))" in install.output
    assert "libgrpc++-dev" in install.output
    assert _module_file(install.python).returncode != 0  # not there: nothing prebuilt came with the sdist


@pytest.mark.parametrize("server", ["native"], indirect=True)
def test_the_pip_installed_server_serves_grpc_on_the_native_frontend(server: ServerProcess) -> None:
    _infer(server)
    assert "(native frontend)" in server.log()
    assert "gRPC on grpc.aio" not in server.log()


@pytest.mark.parametrize("server", ["absent"], indirect=True)
def test_without_the_extension_the_server_warns_once_and_serves_on_grpc_aio(server: ServerProcess) -> None:
    for _ in range(3):
        _infer(server)
    warnings = [line for line in server.log().splitlines() if "gRPC on grpc.aio" in line]
    assert len(warnings) == 1, server.log()
    (line,) = warnings
    assert "WARNING" in line and "apt-get install g++ pkg-config libgrpc++-dev" in line, line
    assert "reinstall shipyard[serve]" in line, line
