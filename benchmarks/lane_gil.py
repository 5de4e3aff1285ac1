"""The idle lane's GIL priority inversion, and whether switching priority per compute removes it:
``python -m benchmarks.lane_gil [--window-s S] [--rounds N] [--hogs N]``.

One process, three kinds of threads, as in the server with an idle lane: a *lane* thread that runs the wide
MLP (one ORT thread, 128-row batches) and some Python around each call while holding the GIL (the merge,
split and hand-back of a batch: ``--python-us``), lowered with ``serving_runtime.scheduling.idle_lane``; a
*loop* thread at normal priority that wakes every millisecond to take the GIL for a moment (the event loop);
and ``--hogs`` busy processes at normal priority that keep every core wanted (the other engineers' work,
the clients). For each mode, interleaved over ``--rounds``:

- ``permanent``: the lane thread at ``SCHED_IDLE`` throughout (the lane before this change);
- ``per-call``: ``SCHED_IDLE`` only inside the ORT call, with the GIL released (``ComputePriority``);
- ``normal``: the lane thread never lowered (for reference).

Reported per mode: the loop's wake-up lateness (how late its 1 ms sleep returned, scheduler delay plus the wait
for the GIL: p50, p99, max) and the lane's batches per second. A lane thread preempted while holding the GIL
at idle priority makes the loop wait until the kernel gives the lane CPU again, which with busy cores at
normal priority can take many milliseconds: the inversion shows as the loop's p99 and max. Needs Linux; the
per-call mode needs ``CAP_SYS_NICE`` or ``RLIMIT_NICE`` >= 20 (``per_call_applied`` says whether it ran so).

``--switch-cost`` times what the per-call switch adds per batch (both system calls, 20,000 times).
``--contention`` measures the other suspected cost instead, with no hogs: real-time-sized ORT calls (5 rows,
another session of the same model) alone and while the lane computes 128-row batches on the other core, at
normal and at idle priority. Idle priority cannot help there: if the second session slows the first on a
free core (shared caches and memory bandwidth: the wide MLP streams its weights), a lane costs real-time
latency whatever its priority.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import threading
import time
from typing import Any

import numpy as np

from shipyard.serving_runtime.scheduling.idle_lane import ComputePriority, lower_this_thread

MODES = ("permanent", "per-call", "normal")


def _hog() -> None:
    while True:
        pass


def _session() -> tuple[Any, str, int]:
    import onnxruntime as ort

    from shipyard.zoo import onnx_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_model("wide_mlp")), options, providers=["CPUExecutionProvider"])
    node = session.get_inputs()[0]
    return session, node.name, int(node.shape[1])


def _spin_python(us: float) -> None:
    """Hold the GIL for about ``us`` microseconds of Python (a batch's merge, split and hand-back)."""
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


def one_window(mode: str, session: Any, name: str, dim: int, window_s: float, python_us: float) -> dict[str, Any]:
    stop = threading.Event()
    batches = [0]
    x = np.random.default_rng(0).standard_normal((128, dim)).astype(np.float32)
    per_call = [False]

    def lane() -> None:
        priority = ComputePriority("idle")
        if mode == "per-call":
            priority.probe()
            per_call[0] = priority.per_call
        elif mode == "permanent":
            lower_this_thread("idle")
        while not stop.is_set():
            _spin_python(python_us / 2)
            priority.run(lambda: session.run(None, {name: x}))
            _spin_python(python_us / 2)
            batches[0] += 1

    late: list[float] = []
    thread = threading.Thread(target=lane, daemon=True)
    thread.start()
    time.sleep(0.05)
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        start = time.perf_counter_ns()
        time.sleep(0.001)
        late.append((time.perf_counter_ns() - start) / 1e6 - 1.0)
        _spin_python(20)
    stop.set()
    thread.join(30)
    late.sort()
    return {
        "mode": mode,
        "loop_late_p50_ms": round(statistics.median(late), 3),
        "loop_late_p99_ms": round(late[int(0.99 * len(late))], 3),
        "loop_late_max_ms": round(late[-1], 3),
        "lane_batches_per_s": round(batches[0] / window_s, 1),
        "per_call_applied": per_call[0] if mode == "per-call" else None,
    }


def contention(session: Any, name: str, dim: int, rounds: int, calls: int = 400) -> None:
    """5-row calls on a second session alone / next to the lane at normal / idle priority (no hogs)."""
    realtime, _, _ = _session()
    small = np.random.default_rng(1).standard_normal((5, dim)).astype(np.float32)
    big = np.random.default_rng(0).standard_normal((128, dim)).astype(np.float32)
    cells: dict[str, list[tuple[float, float]]] = {"alone": [], "lane normal": [], "lane idle": []}
    for _ in range(rounds):
        for label in cells:
            stop = threading.Event()

            def lane(priority: str, stop: threading.Event = stop) -> None:
                lower_this_thread(priority)
                while not stop.is_set():
                    session.run(None, {name: big})

            thread = None
            if label != "alone":
                thread = threading.Thread(target=lane, args=(label.split()[1],), daemon=True)
                thread.start()
                time.sleep(0.05)
            took = []
            for _ in range(calls):
                start = time.perf_counter_ns()
                realtime.run(None, {name: small})
                took.append((time.perf_counter_ns() - start) / 1e6)
            stop.set()
            if thread is not None:
                thread.join(30)
            took.sort()
            cells[label].append((statistics.median(took), took[int(0.99 * len(took))]))
            print(json.dumps({"contention": label, "p50_ms": round(cells[label][-1][0], 3),
                              "p99_ms": round(cells[label][-1][1], 3)}), flush=True)  # fmt: skip
    for label, values in cells.items():
        print(f"{label:12s} 5-row call p50 {statistics.median(v[0] for v in values):.2f} ms, "
              f"p99 {statistics.median(v[1] for v in values):.2f} ms (medians over rounds)")  # fmt: skip


def switch_cost(calls: int = 20_000) -> None:
    """What ``ComputePriority`` adds per batch: both system calls around an empty compute, on a lane-like thread."""
    out: dict[str, Any] = {}

    def run() -> None:
        priority = ComputePriority("idle")
        priority.probe()
        each = []
        for _ in range(calls):
            before = priority.switch_ns
            priority.run(lambda: None)
            each.append(priority.switch_ns - before)
        each.sort()
        p50, p99 = each[len(each) // 2] / 1e3, each[int(0.99 * len(each))] / 1e3
        out.update(per_call=priority.per_call, p50_us=p50, p99_us=p99)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    print(json.dumps({"switch_cost": out, "calls": calls}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)")
    parser.add_argument("--python-us", type=float, default=200.0, help="Python the lane runs per batch, GIL held")
    parser.add_argument("--contention", action="store_true", help="measure two sessions' cache contention instead")
    parser.add_argument("--switch-cost", action="store_true", help="time the per-batch priority switch only")
    args = parser.parse_args(argv)
    if args.switch_cost:
        switch_cost()
        return 0
    session, name, dim = _session()
    if args.contention:
        contention(session, name, dim, args.rounds)
        return 0
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        for _ in range(args.rounds):
            for mode in MODES:
                cell = one_window(mode, session, name, dim, args.window_s, args.python_us)
                print(json.dumps(cell), flush=True)
                results[mode].append(cell)
    finally:
        for hog in hogs:
            hog.kill()
    print("mode       loop late p50 / p99 / max ms (median over rounds)   lane batches/s")
    for mode, cells in results.items():
        med = {k: statistics.median(c[k] for c in cells) for k in cells[0] if k.startswith(("loop", "lane"))}
        print(f"{mode:10s} {med['loop_late_p50_ms']:.2f} / {med['loop_late_p99_ms']:.2f} / "
              f"{med['loop_late_max_ms']:.2f}{'':30s}{med['lane_batches_per_s']:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
