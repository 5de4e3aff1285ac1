"""Overload scenario: offer 10x what shipyard can serve against a model with a bounded queue.

What a user should see: the excess rejected at once (UNAVAILABLE from the model's queue policy, or
RESOURCE_EXHAUSTED from the server's concurrent-call limit before the model sees it), the server's memory flat, every
accepted request answered (none lost), and full service as soon as the burst ends.

On a 2-core machine the burst's own client processes saturate before they reach 10x a batching
model's capacity, and a saturated client's clock reports its own backlog as the server's latency.
So while the burst runs, a *probe* (one more process, ~300 req/s, far from saturation) sends the
same requests: its latencies are what a well-behaved client of the overloaded server sees, and the
refusal-latency check is read from them. At 300 req/s for the 3 s burst the probe gets a few hundred
refusals, so its p99 is not one stall's sample (at 100 req/s it had ~140 and its p99 was the
second-slowest: 12 to 168 ms over five runs of the same code).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from benchmarks import common, loadgen
from benchmarks.common import ModelSpec
from benchmarks.loadgen import LoadSpec

# The burst's clients run at this lower CPU priority: on a machine they share with the server they
# would otherwise take the CPU the server needs to refuse them, which clients on other machines do not.
BURST_NICENESS = 10


class RssSampler:
    """Samples the resident memory of a process and its children every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval_s = interval_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _rss_mb(self) -> float:
        import psutil

        total = 0
        for proc in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._samples.append((time.monotonic(), self._rss_mb()))
            except Exception:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def between(self, start: float, end: float) -> list[float]:
        """RSS samples (MB) taken in ``[start, end]`` (monotonic clock)."""
        return [mb for t, mb in self._samples if start <= t <= end]


def model_counts(rest_port: int, model_name: str) -> dict[str, int] | None:
    """Success and failure counts and total ns from the server's statistics extension, or None."""
    url = f"http://{common.LOOPBACK}:{rest_port}/v2/models/{model_name}/stats"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        totals = {"success": 0, "success_ns": 0, "fail": 0, "fail_ns": 0}
        for entry in body.get("model_stats", []):
            stats = entry.get("inference_stats", {})
            for kind in ("success", "fail"):
                totals[kind] += int(stats.get(kind, {}).get("count", 0))
                totals[kind + "_ns"] += int(stats.get(kind, {}).get("ns", 0))
        return totals
    except (OSError, ValueError):
        return None


def _cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(CPU seconds the process ``pid`` has used, CPU seconds the machine has been busy), or None."""
    import psutil

    try:
        own = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    machine = psutil.cpu_times()
    return own.user + own.system, machine.user + machine.nice + machine.system + machine.irq + machine.softirq


def _cores(
    start: tuple[float, float] | None, end: tuple[float, float] | None, wall_s: float, which: int
) -> float | None:
    if start is None or end is None or wall_s <= 0:
        return None
    return (end[which] - start[which]) / wall_s


def _machine_cores() -> int:
    import psutil

    return int(psutil.cpu_count() or 1)


def _start(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``work`` in a thread; the dict gets ``value`` or ``error`` (a message) when it ends."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except Exception as exc:  # reported by the caller after join
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name="overload-probe", daemon=True)
    thread.start()
    return thread, box


def run_overload(
    grpc_port: int,
    rest_port: int,
    server_pid: int,
    model: ModelSpec,
    served_name: str,
    max_queue_size: int,
    capacity: float | None,
    duration_s: float = 3.0,
    factor: float = 10.0,
    window_s: float = 2.0,
    processes: int = 2,
    max_inflight: int = 4096,
    probe_rate: float = 300.0,
    connections: int = 1,
    client: str = "python",
) -> dict[str, Any]:
    """Measure service before, a burst of ``factor`` x capacity for ``duration_s``, and service after.

    ``capacity`` (inf/s) is measured here at c=64 when not given. ``connections``: gRPC connections
    per burst process (1: a few greedy clients; more: the same load from many clients). ``client``:
    the client for service before and after and for the burst (``loadgen.CLIENTS``; the probe is
    always the Python open-loop client). Raises
    RuntimeError if the load generator fails.
    """
    # One function on purpose (over ~80 lines): the phases share one timeline (before, burst, after)
    # that the RSS windows and the server's counters are cut along, and the result names each number once.
    spec = LoadSpec("grpc", grpc_port, common.grpc_request_bytes(replace(model, name=served_name)), timeout_s=30.0)
    with RssSampler(server_pid) as rss:
        t_before = time.monotonic()
        before = loadgen.run_closed_loop(spec, 16, 0.5, window_s, processes, client)
        if capacity is None:
            capacity = loadgen.run_closed_loop(spec, 64, 0.5, window_s, processes, client).throughput
        time.sleep(0.5)
        counts_before = model_counts(rest_port, served_name)
        t_burst = time.monotonic()
        cpu_burst = _cpu_seconds(server_pid)
        probe_thread, probe_result = _start(
            lambda: loadgen.run_open_loop(spec, probe_rate, duration_s, max_inflight=256, processes=1)
        )
        burst = loadgen.run_open_loop(
            replace(spec, connections=connections),
            factor * max(capacity, 1.0),
            duration_s,
            max_inflight,
            processes,
            niceness=BURST_NICENESS,
            client=client,
        )
        probe_thread.join()
        if "error" in probe_result:
            raise RuntimeError(f"the overload probe failed: {probe_result['error']}")
        probe = probe_result["value"]
        t_burst_end = time.monotonic()
        cpu_burst_end = _cpu_seconds(server_pid)
        counts_after = model_counts(rest_port, served_name)
        time.sleep(0.5)
        after = loadgen.run_closed_loop(spec, 16, 0.5, window_s, processes, client)
        t_after_end = time.monotonic()
    before_mb = rss.between(t_before, t_burst)
    during_mb = rss.between(t_burst, t_burst_end)
    after_mb = rss.between(t_burst_end, t_after_end)
    outcomes = dict(burst["outcomes"])  # burst and probe together, for the server-side accounting
    for kind, count in probe["outcomes"].items():
        outcomes[kind] = outcomes.get(kind, 0) + count
    accepted = outcomes.get("ok", 0)
    # rejected by the model's queue policy (the server's statistics count these as failures)
    queue_rejected = outcomes.get("UNAVAILABLE", 0)
    # refused by the server's concurrent-call limit before the model saw them
    limit_rejected = outcomes.get("RESOURCE_EXHAUSTED", 0)
    rejected = queue_rejected + limit_rejected
    server: dict[str, Any] = {"available": False}
    if counts_before is not None and counts_after is not None:
        delta = {key: counts_after[key] - counts_before[key] for key in counts_after}
        server = {
            "available": True,
            "success": delta["success"],
            "fail": delta["fail"],
            # time from arrival at the model's scheduler to the answer, as the server measures it
            "fail_mean_us": delta["fail_ns"] / delta["fail"] / 1000 if delta["fail"] else None,
            "success_mean_us": delta["success_ns"] / delta["success"] / 1000 if delta["success"] else None,
            # answered by the model but not received as OK by the client (warm-up requests excluded)
            "answers_lost": max(0, delta["success"] - accepted - burst["warmup_ok"] - probe["warmup_ok"]),
            # failures the server counted beyond the queue-full rejections the client saw
            "accepted_then_failed": max(0, delta["fail"] - queue_rejected),
        }
    rss_before = statistics.median(before_mb) if before_mb else None
    rss_peak = max(during_mb) if during_mb else None
    return {
        "status": "ok",
        "model": served_name,
        "max_queue_size": max_queue_size,
        "capacity": capacity,
        "duration_s": duration_s,
        "max_inflight": max_inflight,
        "connections": connections * processes,
        "burst_client": "the C++ client, one process" if client == "native" else f"{processes} Python client processes",
        **burst,
        "sent": burst["sent"] + probe["sent"],
        "outcomes": outcomes,  # burst and probe together
        "accepted": accepted,
        "rejected": rejected,
        "rejected_queue": queue_rejected,
        "rejected_limit": limit_rejected,
        # Lost accepted requests: the server accepted them (its statistics count them) but the client never
        # got their answer. Requests the transport dropped before the model saw them are counted apart.
        "lost": (server["answers_lost"] + server["accepted_then_failed"])
        if server["available"]
        else burst["sent"] + probe["sent"] - accepted - rejected,
        "not_accepted_other": burst["sent"] + probe["sent"] - accepted - rejected,
        "server_counts": server,
        "rss_before_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "rss_after_mb": statistics.median(after_mb) if after_mb else None,
        "rss_growth_mb": None if rss_before is None or rss_peak is None else rss_peak - rss_before,
        # CPU the server process and the whole machine used during the burst, in cores (the difference: the
        # burst's client, the probe and anything else running; docs/serving.md, "Overload")
        "server_cores_burst": _cores(cpu_burst, cpu_burst_end, t_burst_end - t_burst, 0),
        "machine_cores_burst": _cores(cpu_burst, cpu_burst_end, t_burst_end - t_burst, 1),
        "machine_cores": _machine_cores(),
        # what a client that is not itself saturated saw during the burst (see the module docstring)
        "probe": {"rate": probe_rate, **probe},
        "before": before.as_dict(),
        "after": after.as_dict(),
        "recovery_ratio": after.throughput / before.throughput if before.throughput > 0 else None,
    }
