"""Soak the serving runtime: load/unload cycles while another model serves; idle and slow connections.

    python -m benchmarks.soak                                  # the long run (make soak)
    python -m benchmarks.soak --cycles 20 --idle-http 100 --idle-grpc 50 --slowloris 50   # a short one

1. ``--cycles`` times: load model ``cycled`` (explicit mode), infer on it, unload it, while a thread
   keeps inferring on ``steady``; the server's RSS is sampled before (after a warm-up) and after.
   Pass: RSS growth < 20 MB, 0 failed requests on ``steady`` and on ``cycled``.
2. ``--idle-http`` and ``--idle-grpc`` connections held open (HTTP: TCP connections that have sent
   nothing; gRPC: channels that connected and made one call), plus ``--slowloris`` connections that
   dribble a request head a byte at a time; meanwhile a good REST and a good gRPC request are timed.
   Pass: both answered in < 100 ms (median of 10).
Prints the figures; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.edges import Runtime, runtime, write_add_sub

_BODY = json.dumps({"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
                               for n in ("INPUT0", "INPUT1")]}).encode()  # fmt: skip


@dataclass
class SoakReport:
    cycles: int = 0
    cycle_failures: list[str] = field(default_factory=list)
    steady_requests: int = 0
    steady_failures: int = 0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    idle_http: int = 0
    idle_grpc: int = 0
    slowloris: int = 0
    rest_ms: list[float] = field(default_factory=list)
    grpc_ms: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        rest = statistics.median(self.rest_ms) if self.rest_ms else float("nan")
        grpc = statistics.median(self.grpc_ms) if self.grpc_ms else float("nan")
        return [
            f"load->infer->unload cycles: {self.cycles}  failed: {len(self.cycle_failures)}",
            f"steady model meanwhile: {self.steady_requests} requests, {self.steady_failures} failed",
            f"server RSS: {self.rss_start_mb:.1f} MB -> {self.rss_end_mb:.1f} MB "
            f"({self.rss_end_mb - self.rss_start_mb:+.1f} MB)",
            f"with {self.idle_http} idle HTTP, {self.idle_grpc} idle gRPC and {self.slowloris} slowloris connections "
            f"open: good REST request {rest:.1f} ms, good gRPC request {grpc:.1f} ms (median of {len(self.rest_ms)})",
        ]


def _post(url: str, body: bytes = b"{}", timeout: float = 30) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def cycles(served: Runtime, count: int, report: SoakReport) -> None:
    """``count`` load -> infer -> unload cycles of ``cycled`` while a thread infers on ``steady``."""
    stop = threading.Event()

    def steady() -> None:
        while not stop.is_set():
            status = _post(f"{served.http_url}/v2/models/steady/infer", _BODY)
            report.steady_requests += 1
            report.steady_failures += status != 200

    base = served.http_url + "/v2/repository/models/cycled"
    for _ in range(3):  # warm-up: first-use allocations are not growth
        _post(base + "/load"), _post(f"{served.http_url}/v2/models/cycled/infer", _BODY), _post(base + "/unload")
    report.rss_start_mb = served.rss_mb()
    thread = threading.Thread(target=steady, daemon=True)
    thread.start()
    try:
        for i in range(count):
            for what, status in (("load", _post(base + "/load")),
                                 ("infer", _post(f"{served.http_url}/v2/models/cycled/infer", _BODY)),
                                 ("unload", _post(base + "/unload"))):  # fmt: skip
                if status != 200:
                    report.cycle_failures.append(f"cycle {i}: {what} -> {status}")
            report.cycles += 1
    finally:
        stop.set()
        thread.join(30)
    time.sleep(0.5)
    report.rss_end_mb = served.rss_mb()


def _timed_rest(served: Runtime) -> float:
    started = time.perf_counter()
    assert _post(f"{served.http_url}/v2/models/steady/infer", _BODY) == 200
    return (time.perf_counter() - started) * 1000


def _timed_grpc(client: Any, inputs: list[Any]) -> float:
    started = time.perf_counter()
    client.infer("steady", inputs)
    return (time.perf_counter() - started) * 1000


def crowded(served: Runtime, idle_http: int, idle_grpc: int, slowloris: int, report: SoakReport) -> None:
    """Hold idle and slow connections open and time good requests meanwhile."""
    import grpc
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    held: list[socket.socket] = []
    channels: list[Any] = []
    stop = threading.Event()
    try:
        for _ in range(idle_http):
            held.append(socket.create_connection(("127.0.0.1", served.http_port), timeout=10))
        for _ in range(idle_grpc):
            channel = grpc.insecure_channel(served.grpc_host, options=[("grpc.use_local_subchannel_pool", 1)])
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
            channels.append(channel)
        slow = [socket.create_connection(("127.0.0.1", served.http_port), timeout=10) for _ in range(slowloris)]
        held += slow

        def dribble() -> None:
            head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
            for position in range(len(head)):
                if stop.is_set():
                    return
                for sock in slow:
                    try:
                        sock.send(head[position : position + 1])
                    except OSError:
                        pass
                time.sleep(0.05)

        threading.Thread(target=dribble, daemon=True).start()
        report.idle_http, report.idle_grpc, report.slowloris = idle_http, idle_grpc, slowloris
        client = grpcclient.InferenceServerClient(served.grpc_host)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = grpcclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
            inputs.append(tensor)
        _timed_rest(served), _timed_grpc(client, inputs)  # warm-up
        for _ in range(10):
            report.rest_ms.append(_timed_rest(served))
            report.grpc_ms.append(_timed_grpc(client, inputs))
            time.sleep(0.05)
        client.close()
    finally:
        stop.set()
        for sock in held:
            sock.close()
        for channel in channels:
            channel.close()


def run(n_cycles: int, idle_http: int, idle_grpc: int, slowloris: int, workdir: Path | None = None) -> SoakReport:
    report = SoakReport()
    with tempfile.TemporaryDirectory(prefix="shipyard-soak-") as tmp:
        root = workdir or Path(tmp)
        write_add_sub(root / "repository", "cycled")
        with runtime(root, "--model-control-mode", "explicit", "--load-model", "steady", models=("steady",)) as served:
            cycles(served, n_cycles, report)
            crowded(served, idle_http, idle_grpc, slowloris, report)
            if "Traceback" in served.log():
                report.cycle_failures.append("the server logged a traceback:\n" + served.log()[-2000:])
    return report


def passed(report: SoakReport, max_growth_mb: float = 20.0, max_ms: float = 100.0) -> bool:
    return (not report.cycle_failures and report.steady_failures == 0
            and report.rss_end_mb - report.rss_start_mb < max_growth_mb
            and statistics.median(report.rest_ms) < max_ms and statistics.median(report.grpc_ms) < max_ms)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--idle-http", type=int, default=500)
    parser.add_argument("--idle-grpc", type=int, default=200)
    parser.add_argument("--slowloris", type=int, default=100)
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run(args.cycles, args.idle_http, args.idle_grpc, args.slowloris)
    for line in report.lines():
        print(line)
    print(f"took {time.monotonic() - started:.0f} s")
    for failure in report.cycle_failures[:20]:
        print("FAIL", failure)
    ok = passed(report)
    print("result:", "pass" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
