"""The c=1 gap between shipyard and Triton on the same Python model, from inside the model.

    python -m benchmarks.py_c1_env [--servers triton,shipyard] [--rounds 2] [--seconds 3]

Serves ``benchmarks.python_models``' repository in each server, with ``mlp_py``'s ``model.py``
(the wide MLP in ONNX Runtime) extended by a few lines that time ONNX Runtime's own ``run`` in the
model process (wall clock and the calling thread's CPU time) and the model's whole ``execute``.
Loads ``mlp_py`` at concurrency 1 (C++ client) and, over the middle of the window, reads per-thread
CPU (``/proc/<pid>/task/<tid>/schedstat``: on a CPU, waiting for one) of the server and every
process under it. Prints per server: client p50, ORT ``run`` p50 (wall and CPU), ``execute`` p50,
the time outside ``execute`` (client p50 minus it), the threads that ran, and what differs in the
model process's environment (thread-count variables, affinity, nice, scheduling policy, threads,
memory allocator libraries mapped). The servers alternate round by round, so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common, python_models
from benchmarks.loadgen import LoadSpec, run_closed_loop
from benchmarks.threads import _children, sample

# Appended to the model's own source: times ORT's run and execute, flushes to a file beside model.py.
_TIMER = """

import resource as _resource
import time as _time

_ORIG_RUN, _ORIG_EXECUTE, _ORIG_INIT = TritonPythonModel._run, TritonPythonModel.execute, TritonPythonModel.initialize
_ROWS = []


def _timed_init(self, args):
    self._times_path = os.path.join(args["model_repository"], args["model_version"], f"times-{os.getpid()}.jsonl")
    return _ORIG_INIT(self, args)


def _timed_run(self, feeds):
    u0 = _resource.getrusage(_resource.RUSAGE_THREAD)
    w0, c0 = _time.perf_counter_ns(), _time.thread_time_ns()
    out = _ORIG_RUN(self, feeds)
    w1, c1 = _time.perf_counter_ns(), _time.thread_time_ns()
    u1 = _resource.getrusage(_resource.RUSAGE_THREAD)
    self._last_run = (w1 - w0, c1 - c0, u1.ru_minflt - u0.ru_minflt, u1.ru_nivcsw - u0.ru_nivcsw,
                      round((u1.ru_stime - u0.ru_stime) * 1e9))
    return out


def _timed_execute(self, requests):
    w0 = _time.perf_counter_ns()
    out = _ORIG_EXECUTE(self, requests)
    _ROWS.append((*self._last_run, _time.perf_counter_ns() - w0, len(requests)))
    if len(_ROWS) >= 100:
        with open(self._times_path, "a") as f:
            f.write("".join(json.dumps(row) + "\\n" for row in _ROWS))
        _ROWS.clear()
    return out


TritonPythonModel._run, TritonPythonModel.execute = _timed_run, _timed_execute
TritonPythonModel.initialize = _timed_init
"""

_ENV_KEYS = ("OMP", "MKL", "KMP", "ORT", "OPENBLAS", "LD_PRELOAD", "MALLOC", "PYTHON", "GOMP")


def _timed_repo(root: Path, for_triton: bool) -> Path:
    mlp = common.load_model_spec("wide_mlp")
    repo = python_models.write_repository(root, mlp, for_triton=for_triton)
    source = python_models.ORT_MODEL_PY.read_text() + _TIMER
    (repo / "mlp_py" / "1" / "model.py").write_text(source)
    return repo


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def _process_facts(pid: int) -> dict[str, Any]:
    """What could make the same code run slower in one process than another."""
    facts: dict[str, Any] = {"pid": pid}
    try:
        facts["cmd"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        facts["nice"], facts["policy"] = int(stat[16]), int(stat[38])
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        facts["cpus"] = status["Cpus_allowed_list"].strip()
        facts["threads"] = int(status["Threads"])
        facts["rss_mb"] = int(status["VmRSS"].split()[0]) // 1024
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        facts["env"] = sorted(
            e.decode(errors="replace") for e in environ if e and e.decode(errors="replace").startswith(_ENV_KEYS)
        )
        maps = Path(f"/proc/{pid}/maps").read_text()
        facts["alloc_libs"] = sorted(
            {line.rsplit("/", 1)[-1] for line in maps.splitlines() if "malloc" in line or "jemalloc" in line}
        )
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        facts["huge_kb"] = sum(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages"))
        facts["autogroup"] = Path(f"/proc/{pid}/autogroup").read_text().split()[0]
        names = [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task")]
        facts["thread_names"] = sorted(names)
    except OSError as exc:
        facts["error"] = str(exc)
    return facts


def _read_times(repo: Path) -> list[list[int]]:
    rows = []
    for path in (repo / "mlp_py" / "1").glob("times-*.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
        path.unlink()
    return rows


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _round(server: common.ServerProcess, port: int, repo: Path, seconds: float) -> dict[str, Any]:
    mlp = common.load_model_spec("wide_mlp")
    spec = LoadSpec("grpc", port, common.grpc_request_bytes(mlp, model_name="mlp_py"))
    run_closed_loop(spec, 1, 0.3, 0.5, 1, "native")
    time.sleep(0.3)
    _read_times(repo)  # drop warm-up's rows
    result: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: result.update(cell=run_closed_loop(spec, 1, 0.2, seconds, 1, "native")))
    loader.start()
    time.sleep(0.6 + seconds * 0.2)
    pids = [server.pid, *_descendants(server.pid)]
    before, t0 = sample(pids), time.monotonic()
    time.sleep(seconds * 0.5)
    after, elapsed = sample(pids), time.monotonic() - t0
    loader.join()
    time.sleep(0.3)
    times = _read_times(repo)
    cell = result["cell"]
    served = max(1.0, cell.throughput * elapsed)
    threads, slices = [], 0
    for key, (name, on_cpu, waiting, count) in after.items():
        if key in before:
            cpu, wait = (on_cpu - before[key][1]) / 1e9 / elapsed, (waiting - before[key][2]) / 1e9 / elapsed
            runs = (count - before[key][3]) / served
            slices += count - before[key][3]
            if cpu > 0.005 or wait > 0.005:
                threads.append((key[0], name, round(cpu * 100), round(wait * 100), round(runs, 2)))
    return {
        "p50_ms": cell.p50_ms,
        "rate": cell.throughput,
        "ort_wall_ms": _p50([r[0] / 1e6 for r in times]),
        "ort_cpu_ms": _p50([r[1] / 1e6 for r in times]),
        "execute_ms": _p50([r[5] / 1e6 for r in times]),
        "rows": len(times),
        "minflt": _p50([r[2] for r in times]),
        "preempted": sum(r[3] for r in times) / max(1, len(times)),
        "sys_ms": sum(r[4] for r in times) / max(1, len(times)) / 1e6,
        "threads": sorted(threads, key=lambda t: -t[2]),
        "slices": slices / served,
        "cpu_ms": sum(on - before[k][1] for k, (_, on, _, _) in after.items() if k in before) / 1e6 / served,
        "wait_ms": sum(w - before[k][2] for k, (_, _, w, _) in after.items() if k in before) / 1e6 / served,
        "stubs": [_process_facts(pid) for pid in pids[1:] if _is_mlp_stub(pid)],
        "server": _process_facts(server.pid),
    }


def _is_mlp_stub(pid: int) -> bool:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "onnxruntime_pybind11_state" in maps and "stub" in Path(f"/proc/{pid}/cmdline").read_text()


def _start(name: str, repo: Path, workdir: Path) -> tuple[common.ServerProcess, int]:
    """``name``: triton, shipyard, or shipyard:VAR=VALUE,... (a shipyard server with those variables set)."""
    if name == "triton":
        return python_models._start_triton(repo, workdir)
    settings = dict(item.split("=", 1) for item in name.partition(":")[2].split(",") if item)
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)  # ServerProcess.start copies the environment
    try:
        return python_models._start_shipyard(repo, workdir / name.replace(":", "-").replace("=", "_"))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _print(name: str, r: dict[str, Any], facts: bool) -> None:
    outside = (r["p50_ms"] or 0) - r["execute_ms"]
    print(
        f"{name:9s} client p50 {r['p50_ms']:.3f} ms ({r['rate']:.0f}/s)  ORT run p50 {r['ort_wall_ms']:.3f} ms "
        f"(its CPU {r['ort_cpu_ms']:.3f})  execute {r['execute_ms']:.3f}  outside execute {outside:.3f} ms "
        f"[{r['rows']} calls]\n          per run: page faults p50 {r['minflt']}, preempted {r['preempted']:.2f}, "
        f"sys {r['sys_ms']:.3f} ms"
    )
    print(
        "          threads (pid, name, % on CPU, % waiting, times on a CPU per request): "
        + ", ".join(map(str, r["threads"][:8]))
    )
    if facts:
        for stub in r["stubs"]:
            print(f"          model process: {json.dumps(stub)}")
        print(f"          server: {json.dumps({k: v for k, v in r['server'].items() if k != 'thread_names'})}")


def _names(servers: str) -> list[str]:
    """``triton;shipyard;shipyard:A=1,B=2`` (or commas between plain names) -> the server names."""
    if ";" in servers:
        return [s for s in servers.split(";") if s]
    return [s for s in servers.split(",") if s]


def _summary(rounds: dict[str, list[dict[str, Any]]]) -> str:
    """Per server, the median over rounds of each round's p50s (ms)."""
    lines = [
        f"medians over {max(map(len, rounds.values()))} interleaved rounds, ms:",
        "| server | client p50 | ORT run p50 | ORT run CPU | execute p50 | outside execute | thread runs/req |"
        " CPU/req besides ORT | run-queue wait/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, results in rounds.items():
        if not results:
            continue
        column = {
            key: statistics.median(r[key] for r in results)
            for key in ("p50_ms", "ort_wall_ms", "ort_cpu_ms", "execute_ms")
        }
        outside = statistics.median((r["p50_ms"] or 0) - r["execute_ms"] for r in results)
        per = {key: statistics.median(r[key] for r in results) for key in ("slices", "wait_ms")}
        per["cpu_ms"] = statistics.median(r["cpu_ms"] - r["ort_cpu_ms"] for r in results)  # c=1: one run each
        lines.append(
            f"| {name} | {column['p50_ms']:.3f} | {column['ort_wall_ms']:.3f} | {column['ort_cpu_ms']:.3f} | "
            f"{column['execute_ms']:.3f} | {outside:.3f} | {per['slices']:.1f} | {per['cpu_ms']:.3f} | "
            f"{per['wait_ms']:.3f} |"
        )
    first, *others = list(rounds)
    for name in others:  # the same round's difference: both saw the same minute of machine load
        pairs = list(zip(rounds[first], rounds[name], strict=False))
        for key, label in (("p50_ms", "client p50"), ("ort_wall_ms", "ORT run p50")):
            diff = statistics.median(b[key] - a[key] for a, b in pairs)
            lines.append(f"{name} - {first}, {label}, median of the rounds' differences: {diff:+.3f} ms")
        outside = statistics.median((b["p50_ms"] - b["execute_ms"]) - (a["p50_ms"] - a["execute_ms"]) for a, b in pairs)
        lines.append(f"{name} - {first}, outside execute, median of the rounds' differences: {outside:+.3f} ms")
    spread = {name: [round(r["ort_wall_ms"], 2) for r in results] for name, results in rounds.items()}
    lines.append(f"ORT run p50 per round: {spread}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.py_c1_env", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default="triton,shipyard", help="triton,shipyard; or ';' between: triton;shipyard:VAR=VALUE,VAR2=V"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--shipyard-args", default="")
    parser.add_argument("--verbose", action="store_true", help="print every round, not only the first")
    args = parser.parse_args(argv)
    python_models.SHIPYARD_ARGS[:] = args.shipyard_args.split()
    names = _names(args.servers)
    with tempfile.TemporaryDirectory(prefix="shipyard-py-c1-env-") as tmp:
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
                    rounds[name].append(_round(server, port, repo, args.seconds))
                    if args.verbose or number == 0:
                        _print(name, rounds[name][-1], facts=number == 0)
            print(_summary(rounds))
        finally:
            for server, _, _ in running.values():
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
