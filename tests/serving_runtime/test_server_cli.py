"""The command line: flags, KServe spellings, usage errors, --exit-on-error, a port in use."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from helpers import free_port
from server_harness import double_onnx, start_server, write_model

from shipyard.serving_runtime.cli import main, parse_options

pytestmark = pytest.mark.timeout(120)


def test_parse_triton_and_kserve_spellings(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    options = parse_options(
        [
            "--model-repository", str(tmp_path), "--model_dir", str(other), "--model_name", "ignored",
            "--model-control-mode", "poll", "--repository-poll-secs", "2.5",
            "--http_port", "9000", "--grpc_port", "9001", "--strict-readiness", "false", "--exit-on-error",
            "--log-level", "WARNING",
        ]
    )  # fmt: skip
    assert options.repositories == [tmp_path, other]
    assert (options.control_mode, options.repository_poll_secs) == ("poll", 2.5)
    assert (options.http_port, options.grpc_port) == (9000, 9001)
    assert options.strict_readiness is False and options.exit_on_error is True
    assert options.log_level == "warning"
    defaults = parse_options(["--model-repository", str(tmp_path)])
    assert (defaults.http_port, defaults.grpc_port, defaults.control_mode) == (8080, 8081, "none")
    assert defaults.strict_readiness is True and defaults.exit_on_error is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        ([], "give at least one --model-repository"),
        (["--model-repository", "/no/such/dir"], "is not a directory"),
        (["--model-repository", ".", "--model-control-mode", "sometimes"], "invalid choice: 'sometimes'"),
        (["--model-repository", ".", "--load-model", "x"], "--load-model needs --model-control-mode explicit"),
        (["--model-repository", ".", "--http-port", "99999"], "outside 0-65535"),
        (["--model-repository", ".", "--strict-readiness", "maybe"], "expected true or false"),
    ],
)
def test_usage_errors_exit_2_with_usage(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_single_model_dir_needs_a_plain_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = write_model(tmp_path, "models", {1: double_onnx()}, None)
    assert main(["--model_dir", str(model_dir)]) == 2
    assert "name it with --model_name" in capsys.readouterr().err
    assert main(["--model_dir", str(model_dir), "--model_name", "../x"]) == 2
    assert "invalid model name '../x'" in capsys.readouterr().err


def test_module_entry_point_rejects_unknown_args() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", ".", "--nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "usage:" in out.stderr and "--nope" in out.stderr


def test_kserve_style_arguments_serve(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "double", {1: double_onnx()}, None)
    server = start_server(tmp_path, [], "--model_dir", str(repo), "--model_name", "double", wait_models=("double",))
    try:
        assert httpclient.InferenceServerClient(server.http_host).is_server_ready()
    finally:
        assert server.stop() == 0


def test_kserve_model_dir_holding_one_model_serves_it_as_model_name(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "mnt", "models", {1: double_onnx()}, None)  # /mnt/models = one model
    server = start_server(
        tmp_path, [], "--model_dir", str(model_dir), "--model_name", "my-double", wait_models=("my-double",)
    )
    try:
        meta = httpclient.InferenceServerClient(server.http_host).get_model_metadata("my-double")
        assert meta["name"] == "my-double" and meta["inputs"][0]["name"] == "x"
    finally:
        assert server.stop() == 0


def test_exit_on_error_exits_1_naming_the_model(tmp_path: Path, triton_repository: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", str(triton_repository),
         "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--host", "127.0.0.1", "--exit-on-error"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "broken" in out.stderr and "--exit-on-error" in out.stderr


def test_port_in_use_exits_1(tmp_path: Path, triton_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", str(triton_repository),
             "--http-port", str(port), "--grpc-port", str(free_port()), "--host", "127.0.0.1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in out.stderr
