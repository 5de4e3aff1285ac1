"""The native closed-loop gRPC client (``benchmarks/cpp_client/closed_loop.cc``): find it and run it.

Why C++: on the 2-core machine the client shares the CPUs with the server under test. The Python
grpc.aio client costs ~100-150 us of CPU per request there, a quarter to a third of the machine at
the rates measured, which every server then loses; the C++ client costs ~30-55 us (measured with
/proc CPU times, benchmarks/README.md). Triton's own perf_analyzer is C++ for the same reason.

Build it with ``make bench-client`` (g++ and Debian's ``libgrpc++-dev``; ``make bench`` does it).
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import GRPC_INFER_METHOD, LOOPBACK, REPO_ROOT

SOURCE = REPO_ROOT / "benchmarks" / "cpp_client" / "closed_loop.cc"
BINARY = REPO_ROOT / "benchmarks" / "cpp_client" / "build" / "closed_loop"
BUILD_HINT = "build it with `make bench-client` (needs g++ and libgrpc++-dev), or pass --client python"


def unavailable_reason() -> str | None:
    """None when the built client is there and not older than its source, else why not."""
    if not BINARY.exists():
        return f"{BINARY.relative_to(REPO_ROOT)} is not built; {BUILD_HINT}"
    if SOURCE.exists() and BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        return f"{BINARY.relative_to(REPO_ROOT)} is older than {SOURCE.name}; {BUILD_HINT}"
    return None


def run_closed_loop(
    port: int, payload: bytes, concurrency: int, warmup_s: float, window_s: float, connections: int, timeout_s: float
) -> tuple[np.ndarray, list[str], float | None]:
    """Run ``concurrency`` closed-loop ModelInfer calls of ``payload`` over ``connections`` channels to
    127.0.0.1:``port``: a warm-up, then a window. Returns the window's latencies (ms), one error string
    (``"CODE: message"``) per failed call in the window, and the client's CPU seconds in the window.

    Raises: RuntimeError if the client is not built, exits with an error, or does not finish in time.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="shipyard-client-") as tmp:
        payload_path = Path(tmp) / "request.bin"
        payload_path.write_bytes(payload)
        latencies_path = Path(tmp) / "latencies.f64"
        argv = [
            str(BINARY),
            *("--target", f"{LOOPBACK}:{port}", "--method", GRPC_INFER_METHOD),
            *("--payload", str(payload_path), "--latencies", str(latencies_path)),
            *("--concurrency", str(concurrency), "--connections", str(connections)),
            *("--warmup", str(warmup_s), "--window", str(window_s), "--timeout", str(timeout_s)),
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = _read_line(proc, timeout_s=60)
            if not ready.startswith("ready"):
                raise RuntimeError(f"the native client did not get ready: {ready!r} {_stderr(proc)}")
            start = f"{time.monotonic() + 0.2!r}\n"  # the common start time (CLOCK_MONOTONIC)
            out, err = proc.communicate(start, timeout=warmup_s + window_s + timeout_s + 30)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"the native client failed (exit {proc.returncode}): {err.strip()[-2000:]}")
        lines = out.splitlines()
        errors = [line[len("error ") :] for line in lines if line.startswith("error ")]
        cpu_s = next((float(line.split()[1]) for line in lines if line.startswith("cpu ")), None)
        latencies_ms = np.fromfile(latencies_path, dtype=np.float64) * 1000.0
    return latencies_ms, errors, cpu_s


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
