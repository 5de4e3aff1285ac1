"""D2: the native gRPC frontend accepts connections again after the process ran out of file descriptors.

grpc core 1.51 stops accepting for good after ``accept4`` fails with EMFILE (grpc/grpc#20418); the
runtime's watchdog (protocol/grpc_watchdog.py) probes the port and restarts the grpc++ server.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port
from server_harness import build_repository, http_get

LIMIT = 200


def _low_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))


def _grpc_live(host: str, timeout: float) -> bool:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(host, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return bool(stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout).live)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def test_native_grpc_accepts_again_after_descriptors_ran_out(tmp_path: Path) -> None:
    from shipyard.serving_runtime.protocol import native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)
    repo = build_repository(tmp_path / "repo")
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", str(repo), "--host", "127.0.0.1",
             "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--strict-readiness=false",
             "--grpc-frontend", "native", "--grpc-watchdog-secs", "0.5"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_low_fd_limit, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    host = f"127.0.0.1:{grpc_port}"
    try:
        deadline = time.monotonic() + 60
        while not _grpc_live(host, 2):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        flood = []
        for _ in range(LIMIT + 150):  # more than the server may hold: accept4 fails with EMFILE
            try:
                flood.append(socket.create_connection(("127.0.0.1", grpc_port), timeout=2))
            except OSError:
                break
        time.sleep(3)
        for sock in flood:
            sock.close()
        deadline = time.monotonic() + 30
        while not _grpc_live(host, 2):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gRPC never accepted again:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert http_get(f"http://127.0.0.1:{http_port}/v2/health/live")[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)
    print(log_path.read_text()[-1500:])
