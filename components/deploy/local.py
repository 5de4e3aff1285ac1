"""The local target: the serving runtime as a process on this machine (the embedded default).

``LocalTarget.start`` runs ``python -m shipyard.serving_runtime`` on a model repository, waits for
``/v2/health/ready`` and records the deployment in a small JSON state file, so a later process
(``shipyard deploy``, ``mlflow deployments get/delete``) can find and stop it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from shipyard.components.deploy.errors import DeployError, DeployTimeout
from shipyard.components.deploy.spec import GRPC_PORT, HTTP_PORT, READY_PATH, check_name

_LOG_TAIL_BYTES = 4000


def default_state_dir() -> Path:
    """``$SHIPYARD_HOME/deployments`` (default ``~/.shipyard/deployments``)."""
    return Path(os.environ.get("SHIPYARD_HOME", Path.home() / ".shipyard")) / "deployments"


@dataclass(frozen=True)
class LocalDeployment:
    """A runtime process started by ``LocalTarget``; serialisable to its state file."""

    name: str
    repository: str
    host: str
    http_port: int
    grpc_port: int
    pid: int
    create_time: float  # the process' start time: tells our process from a later one reusing the pid
    log_path: str

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` as tritonclient.grpc takes it."""
        return f"{self.host}:{self.grpc_port}"

    def is_running(self) -> bool:
        """True while our runtime process is alive (not a zombie, not a stranger with a reused pid)."""
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def log_tail(self) -> str:
        """The last few KB of the runtime's log (stdout and stderr), or "" when there is none."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a best-effort check before starting the runtime).

    SO_REUSEADDR as servers set it: connections in TIME_WAIT from a stopped server do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def is_ready(http_url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``GET {http_url}/v2/health/ready`` answers 200."""
    try:
        with urllib.request.urlopen(http_url + READY_PATH, timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _failure_line(log_tail: str) -> str:
    """The line of a runtime log that says why it stopped (a model load failure, else the last line)."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for marker in ("models failed to load", "model failed to load", "error:", "Error:"):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1]
    return lines[-1] if lines else "(the log is empty)"


class LocalTarget:
    """Start, find, list and stop local runtime processes, one per deployment name.

    ``state_dir`` holds ``<name>.json`` and ``<name>.log`` per deployment (default
    ``default_state_dir()``).
    """

    def __init__(self, state_dir: str | Path | None = None, python: str = sys.executable) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.python = python

    def _state_path(self, name: str) -> Path:
        return self.state_dir / f"{check_name(name, 'deployment name')}.json"

    def command(
        self,
        repository: str | Path,
        http_port: int,
        grpc_port: int,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """The runtime's command line for a repository, address and ports.

        ``--exit-on-error`` unless ``extra_args`` set it: a model that fails to load ends the start-up at
        once (the deployment fails with the runtime's reason) instead of serving nothing until a timeout.
        """
        fail_fast = [] if any(a.startswith(("--exit-on-error", "--exit_on_error")) for a in extra_args) else [
            "--exit-on-error"
        ]
        return [
            self.python, "-m", "shipyard.serving_runtime",
            "--model-repository", str(repository),
            "--host", host,
            "--http-port", str(http_port),
            "--grpc-port", str(grpc_port),
            *fail_fast,
            *extra_args,
        ]  # fmt: skip

    def start(
        self,
        name: str,
        repository: str | Path,
        *,
        http_port: int = HTTP_PORT,
        grpc_port: int = GRPC_PORT,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> LocalDeployment:
        """Start the runtime on ``repository`` and wait until it reports ready.

        The process runs in its own session, so it outlives this one; stop it with ``stop(name)``.

        Raises:
            DeployError: the name is already deployed and running, the repository is missing, a port
                is taken, or the runtime exited during start-up (its log tail included).
            DeployTimeout: not ready within ``timeout_s`` (the process is stopped; log tail included).
        """
        state_path = self._state_path(name)
        existing = self.find(name)
        if existing is not None and existing.is_running():
            raise DeployError(
                f"local deployment {name!r} is already running at {existing.http_url} (pid {existing.pid}): "
                f"replace it (`shipyard deploy ... --replace`, or `mlflow deployments update`) or stop it first "
                f"(`shipyard undeploy {name} --target local`)"
            )
        from shipyard.serving_runtime.remote_store import is_remote

        repo: str | Path = str(repository) if is_remote(repository) else Path(repository).expanduser().resolve()
        if isinstance(repo, Path) and not repo.is_dir():
            raise DeployError(f"model repository {str(repo)!r} is not a directory: publish a model into it first")
        for port in (http_port, grpc_port):
            if not port_is_free(host, port):
                raise DeployError(f"port {port} on {host} is in use: pass other --http-port/--grpc-port values")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                self.command(repo, http_port, grpc_port, host, extra_args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        deployment = LocalDeployment(
            name=name,
            repository=str(repo),
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(),
            log_path=str(log_path),
        )
        state_path.write_text(json.dumps(asdict(deployment), indent=2))
        deadline = time.monotonic() + timeout_s
        while not is_ready(deployment.http_url):
            if proc.poll() is not None:
                state_path.unlink(missing_ok=True)
                raise DeployError(
                    f"the runtime for {name!r} exited with code {proc.returncode} during start-up: "
                    f"{_failure_line(deployment.log_tail())} (full log: {log_path})"
                )
            if time.monotonic() >= deadline:
                self.stop(name)
                raise DeployTimeout(
                    f"the runtime for {name!r} was not ready on {deployment.http_url}{READY_PATH} after "
                    f"{timeout_s:g} s (stopped it); log tail:\n" + deployment.log_tail()
                )
            time.sleep(0.2)
        return deployment

    def find(self, name: str) -> LocalDeployment | None:
        """The recorded deployment ``name``, or None."""
        path = self._state_path(name)
        if not path.exists():
            return None
        return LocalDeployment(**json.loads(path.read_text()))

    def get(self, name: str) -> LocalDeployment:
        """The recorded deployment ``name``.

        Raises:
            DeployError: there is none.
        """
        found = self.find(name)
        if found is None:
            raise DeployError(f"no local deployment named {name!r} (known: {', '.join(self.names()) or 'none'})")
        return found

    def names(self) -> list[str]:
        """Names of all recorded deployments, running or not."""
        return sorted(p.stem for p in self.state_dir.glob("*.json")) if self.state_dir.is_dir() else []

    def list(self) -> list[LocalDeployment]:
        """All recorded deployments, running or not (see ``LocalDeployment.is_running``)."""
        return [d for d in (self.find(n) for n in self.names()) if d is not None]

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """Stop deployment ``name`` (SIGTERM, then SIGKILL after ``timeout_s``) and forget it.

        Returns:
            True when a running process was stopped, False when it had already exited.
        Raises:
            DeployError: there is no deployment ``name``.
        """
        deployment = self.get(name)
        stopped = False
        if deployment.is_running():
            proc = psutil.Process(deployment.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)  # reaps it when it is our child
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            stopped = True
        else:
            try:  # an exited child of ours: reap it
                psutil.Process(deployment.pid).wait(0)
            except (psutil.Error, ChildProcessError):
                pass
        self._state_path(name).unlink(missing_ok=True)
        return stopped
