"""The real Triton Inference Server (2.51, from the ``nvidia-pytriton==0.7.0`` wheel) as a reference.

``make triton-env`` creates ``.venv-triton`` (the wheel, ``numpy<2``, onnxruntime) and copies the
Python backend stub for the venv's Python into the backend directory. This module finds that
install and starts ``tritonserver`` for a model repository on free loopback ports.

How the Python backend finds the venv's packages without touching users' ``model.py``: the stub
embeds the system's ``libpython3.X`` in isolated mode (``PYTHONPATH`` is ignored), and its
interpreter, like any embedded one, locates its prefix from the program name ``python3`` looked up
on ``PATH``. With the venv's ``bin/`` first on ``PATH`` (what ``source bin/activate`` does, and
what Triton's own ``EXECUTION_ENV_PATH`` does before it starts a stub), that is the venv's
``python3``, whose ``pyvenv.cfg`` makes the venv's ``site-packages`` part of ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import LOOPBACK, REPO_ROOT, ServerProcess, free_port

TRITON_VENV = Path(os.environ.get("SHIPYARD_TRITON_VENV", REPO_ROOT / ".venv-triton"))


class TritonUnavailable(RuntimeError):
    """The Triton install is missing or incomplete; the message names the command that fixes it."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths of one ``tritonserver`` install inside a venv."""

    venv: Path
    site_packages: Path

    @property
    def binary(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "backends"

    @property
    def stub(self) -> Path:
        return self.backends / "python" / "triton_python_backend_stub"

    def environment(self) -> dict[str, str]:
        """What ``tritonserver`` needs in its environment (on top of the caller's)."""
        libs = str(self.libs)
        previous = os.environ.get("LD_LIBRARY_PATH", "")
        return {
            "LD_LIBRARY_PATH": f"{libs}{os.pathsep}{previous}" if previous else libs,
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(self.venv),
            "OMP_NUM_THREADS": "1",
        }


def find_triton(venv: Path | None = None) -> TritonInstall:
    """The Triton install in ``venv`` (default ``.venv-triton``, or ``$SHIPYARD_TRITON_VENV``).

    Raises: TritonUnavailable naming what is missing and ``make triton-env``.
    """
    venv = Path(venv or TRITON_VENV)
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise TritonUnavailable(f"no tritonserver in {venv}; install the reference Triton with `make triton-env`")
    install = TritonInstall(venv, found[0].parents[3])
    if not install.stub.is_file():
        raise TritonUnavailable(
            f"{install.stub} is missing (the Python backend stub); run `make triton-env` to copy it there"
        )
    return install


@dataclass
class TritonServer:
    """A running ``tritonserver``: its ports and its process."""

    process: ServerProcess
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def stop(self) -> None:
        self.process.stop()


def triton_argv(
    install: TritonInstall,
    repositories: Sequence[Path],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``tritonserver`` command line for ``repositories`` on the given loopback ports."""
    argv = [str(install.binary)]
    for repository in repositories:
        argv.append(f"--model-repository={Path(repository).resolve()}")
    argv += [
        f"--backend-directory={install.backends}",
        f"--http-address={LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={LOOPBACK}",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=false",
        *extra_args,
    ]
    return argv


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/v2/health/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_triton(
    repositories: Sequence[Path],
    log_path: Path,
    extra_args: Sequence[str] = (),
    timeout_s: float = 90.0,
    install: TritonInstall | None = None,
) -> TritonServer:
    """Start ``tritonserver`` for ``repositories`` on free ports and wait until it is ready.

    Raises: TritonUnavailable (not installed); RuntimeError with the log's tail when it exits or
    is not ready within ``timeout_s`` (e.g. a model failed to load).
    """
    install = install or find_triton()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    argv = triton_argv(install, repositories, http_port, grpc_port, metrics_port, extra_args)
    process = ServerProcess("tritonserver", argv, log_path, env=install.environment(), cwd=log_path.parent)
    process.start()
    try:
        process.wait_ready(lambda: _ready(http_port), timeout_s)
    except BaseException:
        process.stop()
        raise
    return TritonServer(process, http_port, grpc_port, metrics_port)


@contextlib.contextmanager
def triton_running(
    repositories: Sequence[Path], log_path: Path, extra_args: Sequence[str] = (), timeout_s: float = 90.0
) -> Iterator[TritonServer]:
    """``start_triton`` for the length of a ``with`` block."""
    server = start_triton(repositories, log_path, extra_args, timeout_s)
    try:
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.servers.triton REPO [tritonserver args...]``: serve until Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m benchmarks.servers.triton REPOSITORY [extra tritonserver args]", file=sys.stderr)
        return 2
    try:
        server = start_triton([Path(args[0])], Path("tritonserver.log").resolve(), args[1:])
    except TritonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url} (log tritonserver.log)")
    try:
        while server.process.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
