"""Where the real-time tail comes from while a batch job runs: per-window CPU by thread and batch costs.

``score_bench --profile`` wraps each real-time window (alone and with the job) in a ``WindowProbe``: it samples
``/proc/<pid>/task/*/schedstat`` (``threads.sample``: time on a CPU, time waiting for one) of the server and its
children, of the benchmark's own children (the real-time load client, the scorer) over the middle of the window,
and the model's statistics before and after it (executions and compute time per batch size, queue time). The
summary groups threads by role so the two windows of a round can be compared line by line:

- ``rt-instance`` (the real-time instance's worker thread), ``lane`` (the idle lane's ``...-bg0``), ``event-loop``
  (the server's main thread), ``server-other`` (gRPC's threads, ...), ``rt-client`` (the load generator),
  ``scorer`` (``shipyard score``);
- per group: share of one CPU it ran and share it waited runnable (a thread that waits is one the kernel
  could not run: the machine's two cores were taken);
- per batch size bucket (1-8 rows: real-time batches at c=16; 9-16: borrowed pieces or filled; >16: the lane's
  whole requests): executions and mean compute time in the window: a real-time batch that computes slower next
  to the job (memory bandwidth, preemption) shows here, separately from one that waits longer in the queue.

Linux only (``/proc``); the probe never fails the benchmark: a sampling error leaves the window unprofiled.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from benchmarks import threads

BUCKETS = ((1, 8), (9, 16), (17, 1 << 30))


def _children(pid: int) -> list[int]:
    found = threads._children(pid)
    for child in list(found):
        found += threads._children(child)
    return found


def _role(name: str, pid: int, tid: int, server_pids: set[int], scorer_pid: int | None) -> str:
    if pid in server_pids:
        if name.startswith("wide_mlp-v") and "-bg" in name:  # instance threads' OS names (instances.name_os_thread)
            return "lane"
        if name.startswith("wide_mlp-v"):
            return "rt-instance"
        return "event-loop" if tid == pid else "server-other"
    if scorer_pid is not None and pid == scorer_pid:
        return "scorer"
    return "rt-client"


def _stats(port: int, model: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    batches = {
        int(b["batch_size"]): (int(b["compute_infer"].get("count", 0)), int(b["compute_infer"].get("ns", 0)))
        for b in stats.get("batch_stats", [])
    }
    queue = stats.get("inference_stats", {}).get("queue", {})
    return {"batches": batches, "queue": (int(queue.get("count", 0)), int(queue.get("ns", 0)))}


class WindowProbe:
    """Samples one real-time window's middle (``start`` before the window's client starts; ``result`` after)."""

    def __init__(self, server_pid: int, grpc_port: int, model: str, warmup_s: float, window_s: float,
                 scorer_pid: int | None = None) -> None:  # fmt: skip
        self.server_pid, self.port, self.model, self.scorer_pid = server_pid, grpc_port, model, scorer_pid
        self.delay_s = warmup_s + min(0.5, window_s / 10) + 0.3  # client start-up and warm-up
        self.span_s = max(0.2, window_s - 2 * min(0.5, window_s / 10) - 0.3)
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._probe, name="score-profile", daemon=True)

    def start(self) -> WindowProbe:
        self._thread.start()
        return self

    def result(self) -> dict[str, Any]:
        self._thread.join(self.delay_s + self.span_s + 30)
        return self._out

    def _pids(self) -> tuple[list[int], set[int]]:
        server = {self.server_pid, *_children(self.server_pid)}
        return [*server, *_children(os.getpid())], server

    def _probe(self) -> None:
        try:
            time.sleep(self.delay_s)
            pids, server = self._pids()
            before, stats0, t0 = threads.sample(pids), _stats(self.port, self.model), time.monotonic()
            time.sleep(self.span_s)
            after, stats1, elapsed = threads.sample(pids), _stats(self.port, self.model), time.monotonic() - t0
            self._out = summarize(before, after, elapsed, stats0, stats1, server, self.scorer_pid)
        except Exception as exc:  # a probe never fails the benchmark
            self._out = {"error": f"{type(exc).__name__}: {exc}"}


def summarize(before: threads.Sample, after: threads.Sample, elapsed: float, stats0: dict[str, Any],
              stats1: dict[str, Any], server: set[int], scorer_pid: int | None) -> dict[str, Any]:  # fmt: skip
    roles: dict[str, dict[str, float]] = {}
    for key, (name, on_cpu, waiting, runs) in after.items():
        if key not in before:
            continue
        _, on0, wait0, runs0 = before[key]
        role = roles.setdefault(_role(name, key[0], key[1], server, scorer_pid), {"cpu": 0.0, "wait": 0.0, "runs": 0.0})
        role["cpu"] += (on_cpu - on0) / 1e9 / elapsed
        role["wait"] += (waiting - wait0) / 1e9 / elapsed
        role["runs"] += (runs - runs0) / elapsed
    buckets: dict[str, dict[str, float]] = {}
    for size, (count, ns) in stats1["batches"].items():
        count0, ns0 = stats0["batches"].get(size, (0, 0))
        if count == count0:
            continue
        low, high = next(b for b in BUCKETS if b[0] <= size <= b[1])
        label = f"{low}-{high}" if high < 1 << 30 else f">={low}"
        bucket = buckets.setdefault(label, {"executions": 0, "rows": 0, "ns": 0})
        bucket["executions"] += count - count0
        bucket["rows"] += size * (count - count0)
        bucket["ns"] += ns - ns0
    for bucket in buckets.values():
        bucket["per_s"] = bucket["executions"] / elapsed
        bucket["mean_ms"] = bucket["ns"] / bucket["executions"] / 1e6 if bucket["executions"] else 0.0
    queued = stats1["queue"][0] - stats0["queue"][0]
    queue_ms = (stats1["queue"][1] - stats0["queue"][1]) / queued / 1e6 if queued else 0.0
    return {"seconds": elapsed, "roles": roles, "batches": buckets, "queue_mean_ms": queue_ms}


def lines(label: str, probe: dict[str, Any]) -> list[str]:
    """Markdown table rows for one window's probe."""
    if not probe or "error" in probe:
        return [f"| {label} | not profiled ({probe.get('error', 'no sample') if probe else 'no sample'}) |"]
    roles = "; ".join(f"{name} {r['cpu']:.0%} cpu + {r['wait']:.0%} wait" for name, r in sorted(probe["roles"].items()))
    batches = "; ".join(
        f"{label_} rows: {b['per_s']:.0f}/s x {b['mean_ms']:.2f} ms" for label_, b in sorted(probe["batches"].items())
    )
    return [f"| {label} | {roles} | {batches}; queue mean {probe['queue_mean_ms']:.2f} ms |"]
