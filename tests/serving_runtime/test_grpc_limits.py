"""gRPC connection limits (``--grpc-idle-timeout-secs``, ``--grpc-max-connections``) on both frontends,
seen through real tritonclient gRPC clients: an idle connection is closed by the server after the
timeout (the client reconnects on its next call, unnoticed), connections past the cap are refused at
once while those already open keep serving, and the native frontend without a cap (grpc++ < 1.52)
says so instead of silently serving uncapped.
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from server_harness import ServerProcess, build_repository, start_server
from tritonclient.utils import InferenceServerException

from shipyard.serving_runtime import server as server_module
from shipyard.serving_runtime.cli import parse_options
from shipyard.serving_runtime.protocol import grpc_limits, http_limits, native_grpc

NATIVE = native_grpc.unavailable_reason()
needs_native = pytest.mark.skipif(NATIVE is not None, reason=NATIVE or "")
NATIVE_CAP = None if NATIVE is not None else native_grpc.connection_cap_reason()
FRONTENDS = ["aio", pytest.param("native", marks=needs_native)]
CAP = 4


def _client(server: ServerProcess) -> Any:
    """A tritonclient with a connection of its own (grpc shares one per process and target by default)."""
    return grpcclient.InferenceServerClient(server.grpc_host, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def _open_connections(server: ServerProcess) -> int:
    process = psutil.Process(server.process.pid)
    listing = getattr(process, "net_connections", None) or process.connections
    return sum(1 for c in listing("tcp") if c.laddr.port == server.grpc_port and c.status == psutil.CONN_ESTABLISHED)


def _live(client: Any) -> bool:
    try:
        return bool(client.is_server_live(client_timeout=2))
    except InferenceServerException:
        return False


def _infer(client: Any) -> np.ndarray:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [grpcclient.InferInput(name, [1, 16], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(x)
    return client.infer("simple", inputs, model_version="1", client_timeout=10).as_numpy("OUTPUT0")


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    frontend = request.param
    capped = frontend == "aio" or NATIVE_CAP is None
    tmp = tmp_path_factory.mktemp(f"grpc-limits-{frontend}")
    args = ["--strict-readiness=false", "--grpc-frontend", frontend, "--grpc-idle-timeout-secs", "1"]
    proc = start_server(tmp, [build_repository(tmp / "repo")], *args, *(["--grpc-max-connections", str(CAP)] * capped))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_flags_defaults_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defaults = parse_options(["--model-repository", str(tmp_path)]).grpc_limits
    assert defaults == grpc_limits.GrpcLimits() and defaults.idle_timeout_s == 60 and not defaults.cap_from_flag
    assert defaults.max_connections == parse_options(["--model-repository", str(tmp_path)]).http_limits.max_connections
    options = parse_options(["--model-repository", str(tmp_path), "--grpc-idle-timeout-secs", "2.5",
                             "--grpc-max-connections", "9"]).grpc_limits  # fmt: skip
    assert (options.idle_timeout_s, options.max_connections, options.cap_from_flag) == (2.5, 9, True)
    assert dict(grpc_limits.channel_options(options)) == {grpc_limits.IDLE_ARG: 2500, grpc_limits.CAP_ARG: 9}
    for flag, value in (("--grpc-idle-timeout-secs", "0"), ("--grpc-max-connections", "0")):
        with pytest.raises(SystemExit) as exit_info:
            parse_options(["--model-repository", str(tmp_path), flag, value])
        assert exit_info.value.code == 2
        assert f"{flag} must be" in capsys.readouterr().err


def test_rest_and_grpc_caps_together_stay_below_the_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        rest, grpc_ = http_limits.HttpLimits().max_connections, grpc_limits.GrpcLimits().max_connections
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert rest == grpc_ == 384 and rest + grpc_ + 256 <= 1024


def test_an_idle_connection_is_closed_and_the_client_reconnects_unnoticed(server: ServerProcess) -> None:
    client = _client(server)
    try:
        assert client.is_server_live()
        assert _open_connections(server) == 1
        server.wait_until(lambda: _open_connections(server) == 0, 10, "the idle gRPC connection to be closed")
        assert _infer(client).shape == (1, 16)  # the same client object: its channel reconnected
    finally:
        client.close()


def test_a_connection_that_never_speaks_http2_is_closed_too(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        started = time.monotonic()
        while sock.recv(4096):  # the server's SETTINGS, then its GOAWAY, then the close
            pass
        assert time.monotonic() - started < 5


def test_a_busy_connection_is_not_idle(server: ServerProcess) -> None:
    client = _client(server)
    try:
        for _ in range(12):  # 2.4 s of calls, more than the 1 s idle timeout, on one connection
            _infer(client)
            time.sleep(0.2)
        assert _open_connections(server) == 1
    finally:
        client.close()


def test_connections_past_the_cap_are_refused_while_the_others_keep_serving(server: ServerProcess) -> None:
    if "--grpc-max-connections" not in server.args:
        pytest.skip(NATIVE_CAP or "")
    held = [_client(server) for _ in range(CAP)]
    try:
        for client in held:
            assert client.is_server_live()
        assert _open_connections(server) == CAP
        extra = _client(server)
        started = time.monotonic()
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            extra.is_server_live(client_timeout=5)
        assert time.monotonic() - started < 2  # refused at once, not left waiting
        for client in held:
            assert _infer(client).shape == (1, 16)
        extra.close()
        held.pop().close()
        newcomer = _client(server)  # a place came free: a new client gets in
        held.append(newcomer)
        server.wait_until(lambda: _live(newcomer), 5, "a new connection to be accepted")
        assert _infer(newcomer).shape == (1, 16)
    finally:
        for client in held:
            client.close()


@needs_native
@pytest.mark.skipif(NATIVE_CAP is None, reason="this grpc++ can cap connections")
def test_the_native_frontend_without_a_cap_says_so(tmp_path: Path) -> None:
    limits = grpc_limits.GrpcLimits(max_connections=8, cap_from_flag=True)
    with pytest.raises(OSError, match="--grpc-max-connections needs --grpc-frontend aio"):
        server_module.choose_grpc_frontend("native", limits)
    assert server_module.choose_grpc_frontend("auto", limits) == "aio"
    assert server_module.choose_grpc_frontend("auto", grpc_limits.GrpcLimits()) == "native"
    proc = start_server(tmp_path, [build_repository(tmp_path / "repo")], "--strict-readiness=false",
                        "--grpc-frontend", "native", wait_ready=False)  # fmt: skip
    proc.stop()
    assert "gRPC connections are not capped: the native gRPC frontend is built against grpc++" in proc.log()
