"""The native closed-loop clients: gRPC (``benchmarks/cpp_client/closed_loop.cc``) and REST
(``http_closed_loop.cc``, HTTP/1.1 keep-alive on plain sockets): find them and run them.

Why C++: on the 2-core machine the client shares the CPUs with the server under test. The Python
grpc.aio client costs ~100-150 us of CPU per request there, a quarter to a third of the machine at
the rates measured, which every server then loses; the C++ client costs ~30-55 us (measured with
/proc CPU times, benchmarks/README.md). Triton's own perf_analyzer is C++ for the same reason.

Build them with ``make bench-client`` (g++ and Debian's ``libgrpc++-dev``; ``make bench`` does it).
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.common import GRPC_INFER_METHOD, LOOPBACK, REPO_ROOT, lower_priority

CLIENT_DIR = REPO_ROOT / "benchmarks" / "cpp_client"
SOURCE = CLIENT_DIR / "closed_loop.cc"
BINARY = CLIENT_DIR / "build" / "closed_loop"
HTTP_SOURCE = CLIENT_DIR / "http_closed_loop.cc"
HTTP_BINARY = CLIENT_DIR / "build" / "http_closed_loop"
HEADER = CLIENT_DIR / "client_common.h"  # both include it
BUILD_HINT = "build it with `make bench-client` (needs g++ and libgrpc++-dev), or pass --client python"


def unavailable_reason(protocol: str = "grpc") -> str | None:
    """None when the ``protocol``'s client ("grpc" or "rest") is built and not older than its source,
    else why not."""
    source, binary = (SOURCE, BINARY) if protocol == "grpc" else (HTTP_SOURCE, HTTP_BINARY)
    if not binary.exists():
        return f"{binary.relative_to(REPO_ROOT)} is not built; {BUILD_HINT}"
    for needed in (source, HEADER):
        if needed.exists() and binary.stat().st_mtime < needed.stat().st_mtime:
            return f"{binary.relative_to(REPO_ROOT)} is older than {needed.name}; {BUILD_HINT}"
    return None


def run_closed_loop(
    port: int, payload: bytes, concurrency: int, warmup_s: float, window_s: float, connections: int, timeout_s: float
) -> tuple[np.ndarray, list[str], float | None]:
    """Run ``concurrency`` closed-loop ModelInfer calls of ``payload`` over ``connections`` channels to
    127.0.0.1:``port``: a warm-up, then a window. Returns the window's latencies (ms), one error string
    (``"CODE: message"``) per failed call in the window, and the client's CPU seconds in the window.

    Raises: RuntimeError if the client is not built, exits with an error, or does not finish in time.
    """
    argv = [
        str(BINARY),
        *("--target", f"{LOOPBACK}:{port}", "--method", GRPC_INFER_METHOD),
        *("--concurrency", str(concurrency), "--connections", str(connections)),
    ]
    return _run("grpc", argv, payload, warmup_s, window_s, timeout_s)


def run_closed_loop_http(
    port: int,
    path: str,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    concurrency: int,
    warmup_s: float,
    window_s: float,
    timeout_s: float,
) -> tuple[np.ndarray, list[str], float | None]:
    """Like :func:`run_closed_loop` for REST: ``concurrency`` keep-alive connections each POST ``body``
    to ``path`` with ``headers``, one request in flight per connection. Errors read ``"HTTP <code>:
    <body>"``. Raises: RuntimeError as :func:`run_closed_loop`.
    """
    argv = [str(HTTP_BINARY), *("--host", LOOPBACK, "--port", str(port), "--path", path)]
    for name, value in headers:
        argv += ["--header", f"{name}: {value}"]
    argv += ["--concurrency", str(concurrency)]
    return _run("rest", argv, body, warmup_s, window_s, timeout_s)


def run_open_loop(
    port: int,
    payload: bytes,
    rate: float,
    duration_s: float,
    max_inflight: int,
    connections: int,
    timeout_s: float,
    niceness: int = 0,
) -> dict[str, Any]:
    """Start ModelInfer calls of ``payload`` at ``rate`` per second for ``duration_s`` whatever the
    answers, over ``connections`` channels, at most ``max_inflight`` at once; then wait for the rest.
    ``niceness`` > 0 runs the client at that lower CPU priority.

    Returns ``codes`` (each answered call's status name, "OK" for success), ``latency_ms`` (same
    order), ``samples`` (the first message of each failing status), ``sent``, ``skipped`` (due
    while ``max_inflight`` were in flight), ``offered_s``, ``unanswered`` and ``warmup_ok`` (the
    connection-opening calls that succeeded). Raises: RuntimeError as :func:`run_closed_loop`.
    """
    argv = [
        str(BINARY),
        *("--target", f"{LOOPBACK}:{port}", "--method", GRPC_INFER_METHOD, "--connections", str(connections)),
        *("--rate", str(rate), "--duration", str(duration_s), "--max-inflight", str(max_inflight)),
        *("--timeout", str(timeout_s)),
    ]
    ready, lines, records = _execute("grpc", argv, payload, duration_s + 2 * timeout_s + 30, niceness)
    pairs = records.reshape(-1, 2)
    names = {code.value[0]: code.name for code in grpc.StatusCode}
    samples = [line[len("sample ") :] for line in lines if line.startswith("sample ")]
    fields = {line.split()[0]: line.split()[1] for line in lines if line.split()[:1] != ["sample"] and " " in line}
    return {
        "codes": [names.get(int(code), str(int(code))) for code in pairs[:, 0]],
        "latency_ms": pairs[:, 1] * 1000.0,
        "samples": {sample.split(":", 1)[0]: sample for sample in samples},
        "sent": int(fields.get("sent", 0)),
        "skipped": int(fields.get("skipped", 0)),
        "offered_s": float(fields.get("offered", duration_s)),
        "unanswered": int(fields.get("unanswered", 0)),
        "warmup_ok": int(ready.split()[1]) if len(ready.split()) > 1 else 0,
    }


def _run(
    protocol: str, argv: list[str], payload: bytes, warmup_s: float, window_s: float, timeout_s: float
) -> tuple[np.ndarray, list[str], float | None]:
    argv = [*argv, *("--warmup", str(warmup_s), "--window", str(window_s), "--timeout", str(timeout_s))]
    _, lines, latencies = _execute(protocol, argv, payload, warmup_s + window_s + timeout_s + 30)
    errors = [line[len("error ") :] for line in lines if line.startswith("error ")]
    cpu_s = next((float(line.split()[1]) for line in lines if line.startswith("cpu ")), None)
    return latencies * 1000.0, errors, cpu_s


def _execute(
    protocol: str, argv: list[str], payload: bytes, wait_s: float, niceness: int = 0
) -> tuple[str, list[str], np.ndarray]:
    """Run a client through the protocol at the top of its source: (ready line, output lines, the
    float64 records it wrote). Raises: RuntimeError when it is not built, fails or takes too long."""
    reason = unavailable_reason(protocol)
    if reason is not None:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="shipyard-client-") as tmp:
        payload_path = Path(tmp) / "request.bin"
        payload_path.write_bytes(payload)
        records_path = Path(tmp) / "records.f64"
        argv = [*argv, *("--payload", str(payload_path), "--latencies", str(records_path))]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: lower_priority(niceness)) if niceness else None,
        )
        try:
            ready = _read_line(proc, timeout_s=60)
            if not ready.startswith("ready"):
                raise RuntimeError(f"the native client did not get ready: {ready!r} {_stderr(proc)}")
            start = f"{time.monotonic() + 0.2!r}\n"  # the common start time (CLOCK_MONOTONIC)
            out, err = proc.communicate(start, timeout=wait_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"the native client failed (exit {proc.returncode}): {err.strip()[-2000:]}")
        records = np.fromfile(records_path, dtype=np.float64)
    return ready, out.splitlines(), records


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of ``proc``'s stdout, or RuntimeError after ``timeout_s``."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not line:
        raise RuntimeError(f"the native client printed nothing within {timeout_s:.0f} s")
    return line[0].strip()


def _stderr(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    _, err = proc.communicate()
    return err.strip()[-2000:]
