"""The servers under test, each started as a subprocess on loopback ports.

A :class:`Target` knows how to start its server for a set of models, how to tell it is ready, and
which protocols it speaks (each giving a :class:`~benchmarks.loadgen.LoadSpec` per model):

- ``echo``: a bare grpc.aio servicer returning a canned response (the transport floor; gRPC only);
- ``kserve``: the stock KServe SDK runtime without batching (gRPC and REST binary);
- ``mlserver``: MLServer 1.7.1 with adaptive batching, in ``.venv-mlserver`` (gRPC and REST JSON:
  MLServer has no binary tensor extension);
- ``shipyard``: ``python -m shipyard.serving_runtime`` with dynamic batching (gRPC and REST binary).

The real Triton server and a C++ echo server are in reference_targets.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import LOOPBACK, ModelSpec, ServerProcess
from benchmarks.loadgen import LoadSpec

MLSERVER_VENV = common.REPO_ROOT / ".venv-mlserver"
SHIPYARD_MAX_BATCH = 128
OVERLOAD_SUFFIX = "_bounded"


class TargetUnavailable(RuntimeError):
    """The target cannot run here (e.g. MLServer's environment is missing); the message says how to fix it."""


@dataclass
class Target:
    """One server under test."""

    name: str
    description: str
    server: ServerProcess
    probe: Callable[[], bool]
    specs: dict[str, Callable[[ModelSpec], LoadSpec]] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def protocols(self) -> list[str]:
        """Protocol labels this target is measured with, e.g. ``grpc``, ``rest``, ``rest-json``."""
        return list(self.specs)


# ------------------------------------------------------------------------------------------------ probes


def grpc_probe(port: int, payload: bytes) -> Callable[[], bool]:
    """A readiness probe that sends one real ModelInfer and wants it to succeed."""

    def probe() -> bool:
        import grpc

        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            channel.unary_unary(common.GRPC_INFER_METHOD)(payload, timeout=5)
        return True

    return probe


def http_probe(port: int, path: str) -> Callable[[], bool]:
    """A readiness probe that wants HTTP 200 from ``GET path``."""

    def probe() -> bool:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as resp:
            return bool(resp.status == 200)

    return probe


def all_probes(*probes: Callable[[], bool]) -> Callable[[], bool]:
    """True when every probe is true."""
    return lambda: all(p() for p in probes)


def grpc_spec(port: int, raw: bool = True) -> Callable[[ModelSpec], LoadSpec]:
    return lambda model: LoadSpec("grpc", port, common.grpc_request_bytes(model, raw=raw))


def rest_spec(port: int, binary: bool = True) -> Callable[[ModelSpec], LoadSpec]:
    def build(model: ModelSpec) -> LoadSpec:
        request = common.rest_binary_request(model) if binary else common.rest_json_request(model)
        return LoadSpec("rest", port, request.body, request.path, tuple(request.headers.items()))

    return build


_ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------------------------- targets


def echo_target(models: Sequence[ModelSpec], workdir: Path) -> Target:
    """The transport floor (gRPC only)."""
    port = common.free_port()
    responses = workdir / "echo-responses.json"
    responses.write_text(json.dumps({m.name: common.grpc_response_bytes(m).hex() for m in models}))
    server = ServerProcess(
        "echo",
        common.python_module_argv("benchmarks.servers.echo", "--port", str(port), "--responses", str(responses)),
        workdir / "logs" / "echo.log",
        env=_ONE_THREAD_ENV,
    )
    return Target(
        "echo",
        "bare grpc.aio echo servicer (transport floor)",
        server,
        grpc_probe(port, common.grpc_request_bytes(models[0])),
        {"grpc": grpc_spec(port)},
        startup_timeout_s=30,
        ports={"grpc": port},
    )


def kserve_target(models: Sequence[ModelSpec], workdir: Path) -> Target:
    """Stock KServe SDK runtime, no batching."""
    rest, grpc_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "benchmarks.servers.kserve_onnx",
        "--rest-port",
        str(rest),
        "--grpc-port",
        str(grpc_port),
        *[a for m in models for a in ("--model", f"{m.name}={m.onnx_path}")],
    )
    server = ServerProcess("kserve", argv, workdir / "logs" / "kserve.log", env=_ONE_THREAD_ENV)
    probe = all_probes(
        http_probe(rest, f"/v2/models/{models[0].name}/ready"),
        grpc_probe(grpc_port, common.grpc_request_bytes(models[0])),
    )
    return Target(
        "kserve",
        "stock KServe 0.21 SDK runtime (kserve.Model, no batching)",
        server,
        probe,
        {"grpc": grpc_spec(grpc_port), "rest": rest_spec(rest)},
        ports={"grpc": grpc_port, "rest": rest},
    )


def mlserver_target(
    models: Sequence[ModelSpec],
    workdir: Path,
    parallel_workers: int = 1,
    max_batch_size: int = 128,
    max_batch_time_s: float = 0.005,
) -> Target:
    """MLServer 1.7.1 with adaptive batching, from ``.venv-mlserver``.

    ``parallel_workers`` is MLServer's setting (its default, 1, runs inference in one worker process;
    0 runs it in the server's own process).

    Raises: TargetUnavailable if ``.venv-mlserver`` has no ``mlserver`` (run ``make bench-env``).
    """
    from benchmarks.servers.mlserver_onnx import write_mlserver_config

    executable = MLSERVER_VENV / "bin" / "mlserver"
    if not executable.exists():
        raise TargetUnavailable(f"{executable} not found; create MLServer's environment with `make bench-env`")
    rest, grpc_port, metrics = common.free_port(), common.free_port(), common.free_port()
    folder = write_mlserver_config(
        workdir / "mlserver",
        {m.name: m.onnx_path for m in models},
        rest,
        grpc_port,
        metrics,
        max_batch_size=max_batch_size,
        max_batch_time_s=max_batch_time_s,
        parallel_workers=parallel_workers,
    )
    env = dict(_ONE_THREAD_ENV)
    env["PYTHONPATH"] = str(common.REPO_ROOT)
    env["VIRTUAL_ENV"] = str(MLSERVER_VENV)
    env["PATH"] = f"{MLSERVER_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    server = ServerProcess(
        "mlserver", [str(executable), "start", str(folder)], workdir / "logs" / "mlserver.log", env=env, cwd=folder
    )
    probe = all_probes(
        http_probe(rest, f"/v2/models/{models[0].name}/ready"),
        grpc_probe(grpc_port, common.grpc_request_bytes(models[0])),
    )
    return Target(
        "mlserver",
        f"MLServer 1.7.1, adaptive batching (max_batch_size {max_batch_size}, max_batch_time "
        f"{max_batch_time_s * 1000:g} ms, parallel_workers {parallel_workers})",
        server,
        probe,
        {"grpc": grpc_spec(grpc_port), "rest-json": rest_spec(rest, binary=False)},
        ports={"grpc": grpc_port, "rest": rest},
    )


def shipyard_config(model: ModelSpec, name: str, max_queue_size: int = 0, published: bool = False) -> str:
    """The config.pbtxt the benchmark serves ``model`` with: dynamic batching, one instance, one thread;
    ``published``: with the two priority levels and background rules the publish step writes."""

    def tensors(kind: str, specs: Sequence[common.TensorSpec]) -> str:
        items = ",\n".join(
            f'  {{ name: "{t.name}" data_type: TYPE_{t.datatype} dims: [ {", ".join(map(str, t.dims))} ] }}'
            for t in specs
        )
        return f"{kind} [\n{items}\n]\n"

    policy = f" default_queue_policy {{ max_queue_size: {max_queue_size} }}" if max_queue_size else ""
    if published:
        policy += published_batching()
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {SHIPYARD_MAX_BATCH}\n"
        + tensors("input", model.inputs)
        + tensors("output", model.outputs)
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        + f"dynamic_batching {{{policy} }}\n"
        + 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        + 'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
        + (published_parameters() if published else "")
    )


def _published_config() -> Any:
    """What the publish step writes for a model with ``max_batch_size`` ``SHIPYARD_MAX_BATCH``
    (components/publish/config_builder.py)."""
    from shipyard.components.publish.config_builder import TensorInfo, build_config

    tensor = [TensorInfo("x", "FP32", (-1, 1))]
    return build_config("m", "onnxruntime_onnx", tensor, tensor, max_batch_size=SHIPYARD_MAX_BATCH)


def published_batching() -> str:
    """The priority fields of the publish step's ``dynamic_batching``."""
    batching = _published_config().dynamic_batching
    return f" priority_levels: {batching.priority_levels} default_priority_level: {batching.default_priority_level}"


def published_parameters() -> str:
    """The publish step's parameters (the background level's rules)."""
    parameters = _published_config().parameters
    return "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{parameters[key].string_value}" }} }}\n'
        for key in sorted(parameters)
    )


def write_shipyard_repository(
    root: Path,
    models: Sequence[ModelSpec],
    overload_model: ModelSpec | None,
    max_queue_size: int,
    published: bool = False,
) -> Path:
    """A Triton-layout model repository with every model, plus ``<overload>_bounded`` with a bounded queue."""
    root.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[ModelSpec, str, int]] = [(m, m.name, 0) for m in models]
    if overload_model is not None:
        entries.append((overload_model, overload_model.name + OVERLOAD_SUFFIX, max_queue_size))
    for model, name, queue in entries:
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        target = version / "model.onnx"
        if not target.exists():
            try:
                os.link(model.onnx_path, target)
            except OSError:
                shutil.copyfile(model.onnx_path, target)
        (root / name / "config.pbtxt").write_text(shipyard_config(model, name, queue, published))
    return root


def _native_unavailable_reason(python: str | None) -> str | None:
    """Why the native frontend cannot run under ``python`` (None: this interpreter), or None."""
    if python is None:
        from shipyard.serving_runtime.protocol.native_grpc import unavailable_reason

        return unavailable_reason()
    code = "from shipyard.serving_runtime.protocol.native_grpc import unavailable_reason as u; print(u() or '')"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    if out.returncode != 0:
        raise TargetUnavailable(f"{python} cannot import shipyard's serving runtime: {out.stderr.strip()[-300:]}")
    return out.stdout.strip() or None


def shipyard_grpc_frontend(requested: str, python: str | None = None) -> str:
    """The runtime's ``--grpc-frontend`` the benchmark runs: "auto" becomes what it would pick here
    (under ``python``, another environment's interpreter, when given).

    Raises: TargetUnavailable when "native" is asked for and was not built (the message has the fix).
    """
    reason = _native_unavailable_reason(python)
    if requested == "native" and reason is not None:
        raise TargetUnavailable(reason)
    if requested == "auto":
        return "aio" if reason is not None else "native"
    return requested


def shipyard_target(
    models: Sequence[ModelSpec],
    workdir: Path,
    overload_model: ModelSpec | None = None,
    max_queue_size: int = 256,
    grpc_frontend: str = "auto",
    python: str | None = None,
    published: bool = False,
    name: str = "shipyard",
) -> Target:
    """shipyard's runtime with dynamic batching (max_batch_size 128, no queue delay, one instance).

    ``grpc_frontend``: the runtime's ``--grpc-frontend`` (auto, native, aio); ``python``: the
    interpreter that runs it (e.g. a fresh venv's, where ``pip install .[serve]`` put shipyard;
    default: this one); ``published``: the publish step's priority levels (``shipyard_config``).
    Raises: TargetUnavailable when native is asked for and was not built.
    """
    frontend = shipyard_grpc_frontend(grpc_frontend, python)
    rest, grpc_port = common.free_port(), common.free_port()
    repo = write_shipyard_repository(workdir / f"{name}-repo", models, overload_model, max_queue_size, published)
    argv = common.python_module_argv(
        "shipyard.serving_runtime",
        "--model-repository",
        str(repo),
        "--host",
        LOOPBACK,
        "--http-port",
        str(rest),
        "--grpc-port",
        str(grpc_port),
        "--grpc-frontend",
        frontend,
        python=python,
    )
    server = ServerProcess(name, argv, workdir / "logs" / f"{name}.log", env=_ONE_THREAD_ENV)
    probe = all_probes(
        http_probe(rest, "/v2/health/ready"), grpc_probe(grpc_port, common.grpc_request_bytes(models[0]))
    )
    return Target(
        name,
        "shipyard runtime, dynamic batching (max_batch_size 128, no queue delay), gRPC on "
        + ("grpc++ (native frontend)" if frontend == "native" else "grpc.aio")
        + (f"; run by {python}" if python else "")
        + ("; the publish step's two priority levels" if published else ""),
        server,
        probe,
        {"grpc": grpc_spec(grpc_port), "rest": rest_spec(rest)},
        ports={"grpc": grpc_port, "rest": rest},
    )


# triton and echo-cpp: benchmarks/reference_targets.py (issue 21's native references)
TARGET_NAMES = ("echo", "echo-cpp", "kserve", "mlserver", "triton", "shipyard")
