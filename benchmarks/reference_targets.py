"""The native references of ``make bench`` (issue 21), beside the Python ones in targets.py:

- ``triton``: the real Triton server 2.51 (``.venv-triton``, ``benchmarks/servers/triton.py``), each
  model served by its **Python backend** running the same ONNX Runtime session as shipyard's
  onnxruntime backend (``examples/python_models/onnx_runtime_model.py``: one session run per batch,
  one intra-op thread), with Triton's dynamic batcher (max_batch_size 128, no queue delay) and one
  instance: Triton's C++ frontend and scheduler do the per-request work, Python runs per batch;
- ``echo-cpp``: a grpc++ server answering ModelInfer with a canned response
  (``benchmarks/cpp_client/echo_server.cc``, ``make bench-client``): the transport floor of a
  native server on this machine, against which shipyard's native frontend is measured.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common
from benchmarks.common import ModelSpec, ServerProcess
from benchmarks.targets import (
    SHIPYARD_MAX_BATCH,
    Target,
    TargetUnavailable,
    all_probes,
    grpc_probe,
    grpc_spec,
    http_probe,
    rest_spec,
)

ORT_MODEL_PY = common.REPO_ROOT / "examples" / "python_models" / "onnx_runtime_model.py"
ECHO_SOURCE = common.REPO_ROOT / "benchmarks" / "cpp_client" / "echo_server.cc"
ECHO_BINARY = common.REPO_ROOT / "benchmarks" / "cpp_client" / "build" / "echo_server"


def triton_config(model: ModelSpec) -> str:
    """config.pbtxt of ``model`` behind Triton's Python backend, batched like shipyard's (targets.py)."""

    def tensors(specs: Sequence[common.TensorSpec]) -> str:
        return ", ".join(
            f'{{ name: "{t.name}" data_type: TYPE_{t.datatype} dims: [ {", ".join(map(str, t.dims))} ] }}'
            for t in specs
        )

    return (
        f'name: "{model.name}"\nbackend: "python"\nmax_batch_size: {SHIPYARD_MAX_BATCH}\n'
        f"input [ {tensors(model.inputs)} ]\noutput [ {tensors(model.outputs)} ]\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\ndynamic_batching { }\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    )


def write_triton_repository(root: Path, models: Sequence[ModelSpec]) -> Path:
    """Each model as ``<name>/config.pbtxt`` + ``1/model.py`` (the ORT Python model) + ``1/model.onnx``."""
    for model in models:
        version = root / model.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ORT_MODEL_PY, version / "model.py")
        shutil.copyfile(model.onnx_path, version / "model.onnx")
        (root / model.name / "config.pbtxt").write_text(triton_config(model))
    return root


def triton_target(models: Sequence[ModelSpec], workdir: Path) -> Target:
    """The real Triton server, Python backend + ONNX Runtime. Raises: TargetUnavailable (`make triton-env`)."""
    from benchmarks.servers.triton import TritonUnavailable, find_triton, triton_argv

    try:
        install = find_triton()
    except TritonUnavailable as exc:
        raise TargetUnavailable(str(exc)) from None
    repo = write_triton_repository(workdir / "triton-repo", models)
    http, grpc_port, metrics = common.free_port(), common.free_port(), common.free_port()
    argv = triton_argv(install, [repo], http, grpc_port, metrics)
    logs = workdir / "logs"
    server = ServerProcess("triton", argv, logs / "triton.log", env=install.environment(), cwd=workdir)
    probe = all_probes(
        http_probe(http, "/v2/health/ready"), grpc_probe(grpc_port, common.grpc_request_bytes(models[0]))
    )
    return Target(
        "triton",
        "Triton 2.51 (nvidia-pytriton wheel), Python backend running the same ONNX Runtime session, dynamic "
        f"batching (max_batch_size {SHIPYARD_MAX_BATCH}, no queue delay), one instance",
        server,
        probe,
        {"grpc": grpc_spec(grpc_port), "rest": rest_spec(http)},
        startup_timeout_s=180,
        ports={"grpc": grpc_port, "rest": http},
    )


def echo_cpp_unavailable_reason() -> str | None:
    """None when the C++ echo server is built and not older than its source, else why not."""
    hint = "build it with `make bench-client` (needs g++ and libgrpc++-dev)"
    if not ECHO_BINARY.exists():
        return f"{ECHO_BINARY.relative_to(common.REPO_ROOT)} is not built; {hint}"
    if ECHO_BINARY.stat().st_mtime < ECHO_SOURCE.stat().st_mtime:
        return f"{ECHO_BINARY.relative_to(common.REPO_ROOT)} is older than {ECHO_SOURCE.name}; {hint}"
    return None


def echo_cpp_target(models: Sequence[ModelSpec], workdir: Path) -> Target:
    """The grpc++ echo server (gRPC only). Raises: TargetUnavailable when it is not built."""
    reason = echo_cpp_unavailable_reason()
    if reason is not None:
        raise TargetUnavailable(reason)
    port = common.free_port()
    argv = [str(ECHO_BINARY), "--port", str(port)]
    folder = workdir / "echo-cpp"
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        path = folder / f"{model.name}.response"
        path.write_bytes(common.grpc_response_bytes(model))
        argv += ["--response", f"{model.name}={path}"]
    server = ServerProcess("echo-cpp", argv, workdir / "logs" / "echo-cpp.log")
    return Target(
        "echo-cpp",
        "grpc++ echo server, canned ModelInfer response (transport floor of a native server)",
        server,
        grpc_probe(port, common.grpc_request_bytes(models[0])),
        {"grpc": grpc_spec(port)},
        startup_timeout_s=30,
        ports={"grpc": port},
    )
