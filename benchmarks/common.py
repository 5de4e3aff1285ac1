"""Shared pieces of the benchmark: model specs, request payloads, ports and server processes.

Everything here runs in the benchmark's parent process (which may import ``tritonclient.grpc``, never
``kserve``). Servers under test always run as subprocesses, each killed at the end, even on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LOOPBACK = "127.0.0.1"
GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The checkout's short commit for a report's header ("unknown" outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_ORT_TO_TRITON = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(float16)": "FP16",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Triton datatype and dims without the batch dim."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype for this tensor's datatype.

        Raises: ValueError for a datatype the benchmark does not handle.
        """
        table = {
            "FP32": np.float32,
            "FP64": np.float64,
            "INT64": np.int64,
            "INT32": np.int32,
            "FP16": np.float16,
            "UINT8": np.uint8,
            "BOOL": np.bool_,
        }
        if self.datatype not in table:
            raise ValueError(f"tensor {self.name!r}: datatype {self.datatype} is not supported by the benchmark")
        return np.dtype(table[self.datatype])


@dataclass(frozen=True)
class ModelSpec:
    """A zoo model as the benchmark sees it: its ONNX file and its tensors."""

    name: str
    onnx_path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic random inputs of ``batch`` items."""
        rng = np.random.default_rng(seed)
        return {t.name: rng.standard_normal((batch, *t.dims)).astype(t.numpy_dtype()) for t in self.inputs}


def load_model_spec(name: str) -> ModelSpec:
    """Build (or reuse the cached) zoo model ``name`` and read its tensors from the ONNX file.

    Raises: ValueError for an unknown zoo name or an input with a non-numeric non-batch dim.
    """
    import onnxruntime as ort

    from shipyard.zoo import onnx_model

    path = Path(onnx_model(name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def specs(items: Sequence[object]) -> tuple[TensorSpec, ...]:
        out = []
        for item in items:
            shape = list(item.shape)  # type: ignore[attr-defined]
            dims = shape[1:]
            if not all(isinstance(d, int) for d in dims):
                raise ValueError(f"model {name!r} tensor {item.name!r} has a symbolic non-batch dim: {shape}")  # type: ignore[attr-defined]
            out.append(TensorSpec(item.name, _ORT_TO_TRITON[item.type], tuple(dims)))  # type: ignore[attr-defined]
        return tuple(out)

    return ModelSpec(name, path, specs(session.get_inputs()), specs(session.get_outputs()))


# ---------------------------------------------------------------------------------------------- payloads


def grpc_request_bytes(model: ModelSpec, model_name: str | None = None, raw: bool = True) -> bytes:
    """A serialized Triton ``ModelInferRequest`` for one item (batch 1) of ``model``.

    ``raw=True`` puts the tensors in ``raw_input_contents`` (what tritonclient sends); ``raw=False``
    uses the typed ``contents`` fields (for servers that do not read raw contents).
    """
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model_name or model.name, id="bench")
    for name, array in model.example_inputs(1).items():
        spec = next(t for t in model.inputs if t.name == name)
        tensor = request.inputs.add(name=name, datatype=spec.datatype, shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(array.tobytes())
        elif spec.datatype == "FP32":
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
        else:
            raise ValueError(f"typed gRPC contents are only built for FP32, not {spec.datatype}")
    for out in model.outputs:
        request.outputs.add(name=out.name)
    return bytes(request.SerializeToString())


def grpc_response_bytes(model: ModelSpec, model_name: str | None = None) -> bytes:
    """A canned serialized ``ModelInferResponse`` (zeros) of one item, as the echo servicer returns."""
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name=model_name or model.name, model_version="1", id="bench")
    for out in model.outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=[1, *out.dims])
        response.raw_output_contents.append(np.zeros((1, *out.dims), out.numpy_dtype()).tobytes())
    return bytes(response.SerializeToString())


@dataclass(frozen=True)
class RestRequest:
    """A pre-built REST request: path, headers and body."""

    path: str
    headers: dict[str, str]
    body: bytes


def rest_binary_request(model: ModelSpec, model_name: str | None = None) -> RestRequest:
    """A v2 REST request with the binary tensor extension (``Inference-Header-Content-Length``)."""
    name = model_name or model.name
    arrays = model.example_inputs(1)
    header = {
        "id": "bench",
        "inputs": [
            {
                "name": t.name,
                "shape": [1, *t.dims],
                "datatype": t.datatype,
                "parameters": {"binary_data_size": arrays[t.name].nbytes},
            }
            for t in model.inputs
        ],
        "outputs": [{"name": t.name, "parameters": {"binary_data": True}} for t in model.outputs],
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    body = header_bytes + b"".join(arrays[t.name].tobytes() for t in model.inputs)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header_bytes)),
    }
    return RestRequest(f"/v2/models/{name}/infer", headers, body)


def rest_json_request(model: ModelSpec, model_name: str | None = None) -> RestRequest:
    """A v2 REST request with JSON tensors (for servers without the binary extension)."""
    name = model_name or model.name
    arrays = model.example_inputs(1)
    body = {
        "id": "bench",
        "inputs": [
            {"name": t.name, "shape": [1, *t.dims], "datatype": t.datatype, "data": arrays[t.name].ravel().tolist()}
            for t in model.inputs
        ],
        "outputs": [{"name": t.name} for t in model.outputs],
    }
    return RestRequest(f"/v2/models/{name}/infer", {"Content-Type": "application/json"}, json.dumps(body).encode())


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server under test, started in its own process group and logging to a file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the process (its output goes to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.cwd or REPO_ROOT),
                start_new_session=True,
            )
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        """The process id.

        Raises: RuntimeError if the process was not started.
        """
        if self.proc is None:
            raise RuntimeError(f"server {self.name} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``probe`` until it returns True.

        Raises: RuntimeError (with the log tail) if the process exits or ``timeout_s`` passes first.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc and self.proc.returncode} "
                    f"before it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if probe():
                    return
            except Exception:
                pass
            time.sleep(0.25)
        raise RuntimeError(
            f"{self.name} was not ready after {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it after ``grace_s``."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Kill whatever is left in the group (workers the server forked), then reap.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if self in _LIVE:
            _LIVE.remove(self)


_LIVE: list[ServerProcess] = []


def group_pids(pgid: int) -> list[int]:
    """The live processes (not zombies) in process group ``pgid`` (a server and the children it started:
    Triton's Python-backend stubs, MLServer's workers), read from /proc; empty where /proc is missing."""
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            fields = _stat_fields(entry / "stat")
            if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``."""
    ticks = 0
    for pid in group_pids(pgid):
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _wait_stopped(pgids: Sequence[int], timeout_s: float = 2.0) -> None:
    """Wait (at most ``timeout_s``) until every process of ``pgids`` is stopped: a signal is delivered
    after ``killpg`` returns, and a process may run on for a moment."""
    deadline = time.monotonic() + timeout_s
    pending = [pid for pgid in pgids for pid in group_pids(pgid)]
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if (f := _stat_fields(Path(f"/proc/{pid}/stat"))) and f[0] not in "tT"]
        if pending:
            time.sleep(0.005)


def _stat_fields(path: Path) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (field 3, the state, first), or None when gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


@contextlib.contextmanager
def paused(servers: Sequence[ServerProcess]) -> Iterator[None]:
    """Stop (SIGSTOP) every process group of ``servers`` for the block, and continue (SIGCONT) them on
    leaving it, even on error: the interleaved rounds measure one target while the others are up, and an
    idle server's threads and children (Triton's Python-backend stubs poll) otherwise take CPU from it."""
    stopped: list[int] = []
    try:
        for server in servers:
            if server.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(server.pid, signal.SIGSTOP)
                    stopped.append(server.pid)
        _wait_stopped(stopped)
        yield
    finally:
        for pgid in stopped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGCONT)


def stop_all() -> None:
    """Stop every server process still running (called at exit and on SIGTERM/SIGINT)."""
    for server in list(_LIVE):
        server.stop(grace_s=2.0)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Start ``server`` and stop it on leaving the block, even on error."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


def python_module_argv(module: str, *args: str, python: str | None = None) -> list[str]:
    """``python -m module args...`` with this interpreter unless ``python`` is given."""
    return [python or sys.executable, "-m", module, *args]


def lower_priority(niceness: int) -> None:
    """Run this process (a load generator that must not compete with the server) at ``niceness``.

    ``os.nice`` alone is not enough where the kernel groups CPU time by session (autogroup,
    ``/proc/sys/kernel/sched_autogroup_enabled``, on by default in most distributions' kernels and on
    the benchmark machine): there every session gets an equal share of the CPU whatever its processes'
    nice values, so a client in the benchmark's session took as much CPU as the server in its own
    (``ServerProcess`` starts it in a new session). So the client also starts a session of its own and
    lowers that session's weight (``/proc/self/autogroup``, allowed for one's own processes) when
    ``SHIPYARD_BENCH_CLIENT_SESSION=1``. Off by default: on the 2-core machine a client lowered so gets
    so little CPU while the server is saturated that it offers a fraction of the burst (measured:
    430-850 req/s of an 8-22k req/s target, against 2,000-4,200 without; docs/serving.md, "Overload"), so
    the scenario would no longer be an overload. Call it in the client process (``preexec_fn``, or
    first thing in a worker).
    """
    if os.environ.get("SHIPYARD_BENCH_CLIENT_SESSION", "0") == "1":
        with contextlib.suppress(OSError):
            os.setsid()
            with open("/proc/self/autogroup", "w") as group:
                group.write(str(niceness))
    os.nice(niceness)
