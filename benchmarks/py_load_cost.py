"""Where a Python model's time goes under load, shipyard beside Triton: per-thread CPU per request.

    python -m benchmarks.py_load_cost [--servers "triton;shipyard;shipyard:VAR=VALUE"]
                                      [--concurrency 16] [--rounds 4] [--seconds 3]

Serves ``mlp_py`` (``benchmarks.python_models``' repository, its ``model.py`` timed from inside as
``benchmarks.py_c1_env`` does: ONNX Runtime's ``run``, wall and CPU, and the batch size of each
``execute``) in every server at once and alternates closed-loop windows of the C++ client between
them, round by round, so a ratio compares the same minutes of a shared machine. Over the middle of
each window it reads every thread of the server and its processes (``/proc/*/task/*/schedstat``:
time on a CPU, waiting for one, times put on one) and the client's CPU. A ``shipyard:VAR=V,...``
name is a shipyard server started with those environment variables (an A/B switch in one run).

Prints per server the medians over rounds: throughput, average batch, ORT CPU per request, the CPU
per request of everything else (server threads, model process besides ORT, client), thread
wake-ups per request and run-queue wait per request; then the threads, grouped by process role and
name, in µs of CPU per request; then each server's throughput ratio to the first, per round.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import common, python_models
from benchmarks.loadgen import LoadSpec, run_closed_loop
from benchmarks.py_c1_env import _descendants, _is_mlp_stub, _names, _read_times, _start
from benchmarks.threads import sample

# Appended to the model's source: per execute, when it ended (CLOCK_MONOTONIC ns, as the
# benchmark's time.monotonic_ns), ORT's run wall and thread CPU ns, and the requests it held;
# flushed every 20 calls to a file beside model.py.
_TIMER = """

import time as _time

_ORIG_RUN, _ORIG_EXECUTE, _ORIG_INIT = TritonPythonModel._run, TritonPythonModel.execute, TritonPythonModel.initialize
_ROWS = []


def _timed_init(self, args):
    self._times_path = os.path.join(args["model_repository"], args["model_version"], f"times-{os.getpid()}.jsonl")
    return _ORIG_INIT(self, args)


def _timed_run(self, feeds):
    w0, c0 = _time.perf_counter_ns(), _time.thread_time_ns()
    out = _ORIG_RUN(self, feeds)
    self._last_run = (_time.perf_counter_ns() - w0, _time.thread_time_ns() - c0)
    return out


def _timed_execute(self, requests):
    start = _time.monotonic_ns()
    out = _ORIG_EXECUTE(self, requests)
    _ROWS.append((_time.monotonic_ns(), *self._last_run, len(requests), start))
    if len(_ROWS) >= 20:
        with open(self._times_path, "a") as f:
            f.write("".join(json.dumps(row) + "\\n" for row in _ROWS))
        _ROWS.clear()
    return out


TritonPythonModel._run, TritonPythonModel.execute = _timed_run, _timed_execute
TritonPythonModel.initialize = _timed_init
"""


def _timed_repo(root: Path, for_triton: bool) -> Path:
    mlp = common.load_model_spec("wide_mlp")
    repo = python_models.write_repository(root, mlp, for_triton=for_triton)
    source = python_models.ORT_MODEL_PY.read_text() + _TIMER
    (repo / "mlp_py" / "1" / "model.py").write_text(source)
    return repo


def _role(pid: int, server_pid: int, stubs: set[int]) -> str:
    if pid == server_pid:
        return "server"
    return "mlp-stub" if pid in stubs else "other"


def _round(server: common.ServerProcess, port: int, repo: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    mlp = common.load_model_spec("wide_mlp")
    spec = LoadSpec("grpc", port, common.grpc_request_bytes(mlp, model_name="mlp_py"))
    result: dict[str, Any] = {}
    _read_times(repo)
    loader = threading.Thread(
        target=lambda: result.update(cell=run_closed_loop(spec, concurrency, 0.5, seconds, 2, "native"))
    )
    loader.start()
    time.sleep(0.5 + seconds * 0.2)
    pids = [server.pid, *_descendants(server.pid)]
    stubs = {pid for pid in pids[1:] if _is_mlp_stub(pid)}
    before, t0 = sample(pids), time.monotonic_ns()
    time.sleep(seconds * 0.5)
    after, t1 = sample(pids), time.monotonic_ns()
    elapsed = (t1 - t0) / 1e9
    loader.join()
    cell = result["cell"]
    rows = sorted(r for r in _read_times(repo) if t0 <= r[0] < t1)  # the executes that ended in the span
    times = [r[1:] for r in rows]
    gaps = [b[4] - a[0] for a, b in itertools.pairwise(rows)]  # model idle between executes
    busy = sum(r[0] - r[4] for r in rows) / max(1, rows[-1][0] - rows[0][4]) if rows else float("nan")
    requests = sum(r[2] for r in times)
    served = max(1.0, requests or cell.throughput * elapsed)  # the model's own count over the span
    threads: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # µs CPU, µs wait, runs per request
    for key, (name, on_cpu, waiting, count) in after.items():
        if key not in before:
            continue
        row = threads[f"{_role(key[0], server.pid, stubs)}/{name}"]
        row[0] += (on_cpu - before[key][1]) / 1e3 / served
        row[1] += (waiting - before[key][2]) / 1e3 / served
        row[2] += (count - before[key][3]) / served
    ort_cpu_us = sum(r[1] for r in times) / 1e3 / max(1, requests)
    return {
        "rate": cell.throughput,
        "p50_ms": cell.p50_ms,
        "p99_ms": cell.p99_ms,
        "batch": requests / len(times) if times and requests else float("nan"),
        "ort_cpu_us": ort_cpu_us,
        "ort_wall_ms": statistics.median(r[0] / 1e6 for r in times) if times else float("nan"),
        "gap_us": statistics.median(gaps) / 1e3 if gaps else float("nan"),
        "busy": busy,
        "client_us": (cell.client_cpu_s or 0) / max(1, cell.completed) * 1e6,
        "threads": dict(threads),
    }


def _summary(rounds: dict[str, list[dict[str, Any]]]) -> str:
    def med(results: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in results)

    lines = [
        "| server | inf/s | p50 ms | p99 ms | avg batch | ORT CPU µs/req | server CPU µs/req | stub CPU besides ORT"
        " µs/req | client µs/req | wake-ups/req | run-queue wait µs/req | execute busy | gap p50 µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, results in rounds.items():
        server = statistics.median(
            sum(v[0] for k, v in r["threads"].items() if k.startswith("server/")) for r in results
        )
        stub = statistics.median(
            sum(v[0] for k, v in r["threads"].items() if k.startswith("mlp-stub/")) - r["ort_cpu_us"] for r in results
        )
        wakes = statistics.median(sum(v[2] for v in r["threads"].values()) for r in results)
        wait = statistics.median(sum(v[1] for v in r["threads"].values()) for r in results)
        lines.append(
            f"| {name} | {med(results, 'rate'):,.0f} | {med(results, 'p50_ms'):.2f} | {med(results, 'p99_ms'):.2f} | "
            f"{med(results, 'batch'):.1f} | {med(results, 'ort_cpu_us'):.0f} | {server:.0f} | {stub:.0f} | "
            f"{med(results, 'client_us'):.0f} | {wakes:.1f} | {wait:.0f} | {med(results, 'busy'):.0%} | "
            f"{med(results, 'gap_us'):.0f} |"
        )
    lines.append("\nthreads (medians over rounds): µs CPU / µs waiting / times on a CPU, per request")
    for name, results in rounds.items():
        keys = sorted({k for r in results for k in r["threads"]})
        rows = []
        for key in keys:
            values = [r["threads"].get(key, [0.0, 0.0, 0.0]) for r in results]
            cpu, wait, runs = (statistics.median(v[i] for v in values) for i in range(3))
            if cpu >= 1 or runs >= 0.05:
                rows.append((cpu, f"{key} {cpu:.0f}/{wait:.0f}/{runs:.2f}"))
        lines.append(f"{name}: " + ", ".join(text for _, text in sorted(rows, reverse=True)))
    first, *others = list(rounds)
    for name in others:
        ratios = [b["rate"] / a["rate"] for a, b in zip(rounds[first], rounds[name], strict=False) if a["rate"]]
        lines.append(
            f"{name} / {first} throughput per round: {', '.join(f'{x:.2f}' for x in ratios)} "
            f"(median {statistics.median(ratios):.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.py_load_cost", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default="triton;shipyard", help="';' between: triton;shipyard;shipyard:VAR=VALUE,VAR2=V"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--verbose", action="store_true", help="print every round")
    args = parser.parse_args(argv)
    names = _names(args.servers)
    with tempfile.TemporaryDirectory(prefix="shipyard-py-load-cost-") as tmp:
        work = Path(tmp)
        running: dict[str, tuple[common.ServerProcess, int, Path]] = {}
        try:
            for name in names:
                repo = _timed_repo(work / f"repo-{len(running)}", for_triton=name == "triton")
                server, port = _start(name, repo, work)
                running[name] = (server, port, repo)
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for number in range(args.rounds):
                for name in names if number % 2 == 0 else names[::-1]:
                    server, port, repo = running[name]
                    r = _round(server, port, repo, args.concurrency, args.seconds)
                    rounds[name].append(r)
                    if args.verbose:
                        print(
                            f"{name}: {r['rate']:.0f} inf/s batch {r['batch']:.1f} busy {r['busy']:.0%} "
                            f"gap {r['gap_us']:.0f} µs",
                            flush=True,
                        )
            print(f"c={args.concurrency}, {args.rounds} interleaved rounds of {args.seconds:g} s")
            print(_summary(rounds))
        finally:
            for server, _, _ in running.values():
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
