"""Where a server's CPU goes under load: per-thread CPU of one target during one closed-loop cell.

    python -m benchmarks.threads [--target shipyard] [--model add_sub] [--protocol grpc]
                                 [--concurrency 64] [--client native] [--seconds 3]

Starts the target as ``make bench`` does, loads it, and reads ``/proc/<pid>/task/<tid>/schedstat``
(time on a CPU, time waiting for one) for every thread of the server and its child processes over
the middle of the window, plus the load generator's own CPU. Prints, per thread, the share of one
CPU it ran and waited, its CPU per request and how many times per request it was put on a CPU
(``runs/req``: its wake-ups, each a hand-off from another thread or a poll that returned, plus
preemptions; split into ``slept`` (it waited for something: a lock, a condition, I/O) and
``preempt`` (another thread took its CPU) from ``/proc/.../status``); then the
server's and the client's CPU per request and the server's wake-ups per request.

On this 2-core machine a thread that runs ~100% of a CPU (plus its wait) is the bottleneck; when
the threads' running shares add up to ~200% the machine is. For shipyard it also prints how big the
model's executions were over the whole cell (the statistics extension's ``batch_stats``): the Python
work per execution is paid once per batch, so a cell of mostly one-item executions pays it per
request. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import common, reference_targets, report, targets
from benchmarks.loadgen import CLIENTS, CellResult, run_closed_loop

Sample = dict[tuple[int, int], tuple[str, int, int, int]]  # (pid, tid) -> (name, on-CPU ns, waiting ns, times run)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def sample(pids: list[int]) -> Sample:
    """Per thread of ``pids``: name, nanoseconds on a CPU, nanoseconds waiting for one, times it was put on a CPU."""
    out: Sample = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    on_cpu, waiting, slices = f.read().split()
            except OSError:
                continue
            out[(pid, int(tid))] = (name, int(on_cpu), int(waiting), int(slices))
    return out


Switches = dict[tuple[int, int], tuple[int, int]]  # (pid, tid) -> (voluntary, involuntary) context switches


def switches(pids: list[int]) -> Switches:
    """Per thread of ``pids``: how many times it gave up its CPU itself (slept: waited for a lock, a
    condition, I/O) and how many times it was preempted (``/proc/.../status``)."""
    out: Switches = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
                out[(pid, int(tid))] = (
                    int(fields["voluntary_ctxt_switches"]),
                    int(fields["nonvoluntary_ctxt_switches"]),
                )
            except (OSError, KeyError, ValueError):
                continue
    return out


def measure(
    target_name: str,
    model_name: str,
    protocol: str,
    concurrency: int,
    client: str,
    seconds: float,
    grpc_frontend: str = "auto",
    shipyard_args: str = "",
    shipyard_published: bool = False,
) -> dict[str, Any]:
    """Run one cell against a fresh ``target_name`` and return per-thread CPU over its middle part.

    ``grpc_frontend``: shipyard's ``--grpc-frontend``; ``shipyard_args``: more of its flags (other
    targets ignore both); ``shipyard_published``: the publish step's priority levels (``targets.shipyard_config``).

    Raises: TargetUnavailable, RuntimeError (the target or the load generator failed).
    """
    model = common.load_model_spec(model_name)
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-threads-"))
    if target_name == "shipyard":
        target = targets.shipyard_target([model], workdir, grpc_frontend=grpc_frontend, published=shipyard_published)
        target.server.argv.extend(shlex.split(shipyard_args))
    else:
        build = {
            "echo": targets.echo_target,
            "kserve": targets.kserve_target,
            "mlserver": targets.mlserver_target,
            "triton": reference_targets.triton_target,
            "echo-cpp": reference_targets.echo_cpp_target,
        }
        target = build[target_name]([model], workdir)
    warmup_s, margin_s = 1.5, 1.0
    with common.running(target.server):
        target.server.wait_ready(target.probe, target.startup_timeout_s)
        if protocol not in target.specs:
            raise RuntimeError(f"{target_name} has no {protocol!r} endpoint; it has {', '.join(target.specs)}")
        spec = target.specs[protocol](model)
        result: dict[str, CellResult] = {}

        def load() -> None:
            result["cell"] = run_closed_loop(spec, concurrency, warmup_s, seconds + 2 * margin_s, client=client)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(warmup_s + margin_s + 1.0)  # client start-up, warm-up, then into the window
        pids = [target.server.pid, *_children(target.server.pid)]
        before, switched0, t0 = sample(pids), switches(pids), time.monotonic()
        time.sleep(seconds)
        after, switched1, elapsed = sample(pids), switches(pids), time.monotonic() - t0
        loader.join()
        sizes = batch_sizes(target.ports["rest"], model.name) if target_name in ("shipyard", "triton") else []
    cell = result["cell"]
    rate = cell.throughput
    threads = per_thread(before, after, elapsed, switched0, switched1)
    server_cpu = sum(t["cpu"] for t in threads)
    client_us = report.client_us_per_request(cell.as_dict())
    return {
        "cell": cell,
        "threads": threads,
        "server_cpu": server_cpu,
        "server_us_per_request": server_cpu / rate * 1e6 if rate else None,
        "client_us_per_request": client_us,
        "batch_sizes": sizes,
    }


def per_thread(
    before: Sample,
    after: Sample,
    elapsed: float,
    switched0: Switches | None = None,
    switched1: Switches | None = None,
) -> list[dict[str, Any]]:
    """Per thread seen in both samples, busiest first: its share of one CPU on it (``cpu``) and
    waiting for one (``wait``), how many times a second it was put on a CPU (``runs_per_s``:
    wake-ups, plus preemptions on a busy machine) and, given ``switches`` before and after, how
    many times a second it slept (``sleeps_per_s``) and was preempted (``preempted_per_s``)."""
    threads: list[dict[str, Any]] = []
    for key, (name, on_cpu, waiting, runs) in after.items():
        if key not in before:
            continue
        _, on0, wait0, runs0 = before[key]
        threads.append(
            {
                "pid": key[0],
                "tid": key[1],
                "name": name,
                "cpu": (on_cpu - on0) / 1e9 / elapsed,
                "wait": (waiting - wait0) / 1e9 / elapsed,
                "runs_per_s": (runs - runs0) / elapsed,
            }
        )
        if switched0 and switched1 and key in switched0 and key in switched1:
            (v0, n0), (v1, n1) = switched0[key], switched1[key]
            threads[-1]["sleeps_per_s"] = (v1 - v0) / elapsed
            threads[-1]["preempted_per_s"] = (n1 - n0) / elapsed
    threads.sort(key=lambda t: -t["cpu"])
    return threads


BATCH_BUCKETS = ((1, 1), (2, 4), (5, 16), (17, 64), (65, 1 << 30))


def batch_sizes(rest_port: int, model: str) -> list[tuple[int, int]]:
    """(batch size, executions) of ``model`` so far, from shipyard's statistics endpoint."""
    url = f"http://{common.LOOPBACK}:{rest_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    return sorted((int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in stats.get("batch_stats", []))


def batch_lines(sizes: list[tuple[int, int]]) -> list[str]:
    """Per bucket of batch sizes: its share of the executions and of the items they ran."""
    executions, items = sum(c for _, c in sizes), sum(b * c for b, c in sizes)
    if not executions:
        return []
    out = [f"executions: {executions:,}, {items / executions:.1f} items each on average"]
    for low, high in BATCH_BUCKETS:
        count = sum(c for b, c in sizes if low <= b <= high)
        ran = sum(b * c for b, c in sizes if low <= b <= high)
        if count:
            label = f"{low}" if low == high else f"{low}-{high}" if high < 1 << 30 else f">={low}"
            out.append(f"  batch {label:6s} {count / executions:5.0%} of executions, {ran / items:5.0%} of items")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="shipyard", choices=targets.TARGET_NAMES)
    parser.add_argument("--model", default="add_sub")
    parser.add_argument("--protocol", default="grpc")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--client", default="native", choices=CLIENTS)
    parser.add_argument("--seconds", type=float, default=3.0, help="how long the CPU is sampled (default 3)")
    parser.add_argument(
        "--shipyard-grpc-frontend", default="auto", choices=("auto", "native", "aio"), help="shipyard's --grpc-frontend"
    )
    parser.add_argument(
        "--shipyard-args", default="", help='more flags for shipyard\'s server, e.g. "--no-grpc-fast-path"'
    )
    parser.add_argument(
        "--shipyard-published", action="store_true", help="shipyard's model with the publish step's priority levels"
    )
    args = parser.parse_args(argv)
    out = measure(
        args.target,
        args.model,
        args.protocol,
        args.concurrency,
        args.client,
        args.seconds,
        args.shipyard_grpc_frontend,
        args.shipyard_args,
        args.shipyard_published,
    )
    cell: CellResult = out["cell"]
    rate = cell.throughput
    print(
        f"{args.target} {args.protocol} {args.model} c={args.concurrency} ({args.client} client): "
        f"{rate:,.0f} req/s, p50 {cell.p50_ms or 0:.2f} ms, p99 {cell.p99_ms or 0:.2f} ms, errors {cell.errors}"
    )
    for sample in sorted(set(cell.error_samples))[:3]:
        print(f"  error: {sample}")
    header = f"{'thread':28s} {'on CPU':>7s} {'waiting':>8s} {'µs/req':>7s} {'runs/req':>8s}"
    print(f"{header} {'slept':>6s} {'preempt':>7s}")
    for t in out["threads"]:
        if t["cpu"] < 0.005:
            continue
        label = f"{t['name']} ({t['tid']}{', main' if t['tid'] == t['pid'] else ''})"
        per_request = t["cpu"] / rate * 1e6 if rate else 0.0
        runs = t["runs_per_s"] / rate if rate else 0.0
        slept = t.get("sleeps_per_s", 0.0) / rate if rate else 0.0
        preempted = t.get("preempted_per_s", 0.0) / rate if rate else 0.0
        print(
            f"{label:28s} {t['cpu'] * 100:6.1f}% {t['wait'] * 100:7.1f}% {per_request:7.1f} {runs:8.2f} "
            f"{slept:6.2f} {preempted:7.2f}"
        )
    server_us = out["server_us_per_request"]
    client_us = out["client_us_per_request"]
    print(
        f"server: {out['server_cpu'] * 100:.0f}% of one CPU, "
        f"{'—' if server_us is None else f'{server_us:.0f}'} µs per request; client: "
        f"{'—' if client_us is None else f'{client_us:.0f}'} µs per request; "
        f"server wake-ups per request: {sum(t['runs_per_s'] for t in out['threads']) / rate if rate else 0:.1f}"
    )
    for line in batch_lines(out["batch_sizes"]):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
