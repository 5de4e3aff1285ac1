"""Pin a loaded shipyard server's threads per window and print the rate (session 19's experiment).

    PYTHONPATH=. python benchmarks/results/session19-2026-12-07/pin_threads.py add_sub 64

Serves one model as ``make bench`` does, loads it over gRPC with the C++ closed-loop client and,
twice over ``PLANS``, sets the affinity of the server's event loop (``python``), grpc's pollers
(``nexting_thread``) and ``grpc-writer`` for a 6 s window each, printing the rate and the items
per execution from the statistics endpoint. Linux only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import common, targets
from benchmarks.loadgen import run_closed_loop

BOTH = {0, 1}
PLANS: list[tuple[str, dict[str, set[int]]]] = [
    ("free", {"python": BOTH, "nexting_thread": BOTH, "grpc-writer": BOTH}),
    ("loop0 writer0", {"python": {0}, "nexting_thread": BOTH, "grpc-writer": {0}}),
    ("free", {"python": BOTH, "nexting_thread": BOTH, "grpc-writer": BOTH}),
    ("loop1 writer1", {"python": {1}, "nexting_thread": BOTH, "grpc-writer": {1}}),
]
WINDOW_S = 6.0


def counts(rest_port: int, model: str) -> tuple[int, int]:
    """(inferences, executions) of ``model`` so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/models/{model}/stats") as response:
        stats = json.loads(response.read())["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def threads_by_name(pid: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            out.setdefault(f.read().strip(), []).append(int(tid))
    return out


def main() -> None:
    model = common.load_model_spec(sys.argv[1])
    concurrency = int(sys.argv[2])
    target = targets.shipyard_target([model], Path(tempfile.mkdtemp(prefix="pin-")))
    rest = target.ports["rest"]
    with common.running(target.server):
        target.server.wait_ready(target.probe, target.startup_timeout_s)
        spec = target.specs["grpc"](model)
        seconds = WINDOW_S * len(PLANS) * 2 + 4
        loader = threading.Thread(target=lambda: run_closed_loop(spec, concurrency, 1.0, seconds, client="native"))
        loader.start()
        time.sleep(3)
        for _ in range(2):
            for name, plan in PLANS:
                found = threads_by_name(target.server.pid)
                for comm, cpus in plan.items():
                    for tid in found.get(comm, []):
                        os.sched_setaffinity(tid, cpus)
                time.sleep(1)
                done0, runs0 = counts(rest, model.name)
                start = time.monotonic()
                time.sleep(WINDOW_S - 1)
                done1, runs1 = counts(rest, model.name)
                rate = (done1 - done0) / (time.monotonic() - start)
                items = (done1 - done0) / max(1, runs1 - runs0)
                print(f"{name:28s} {rate:8.0f} req/s  {items:5.1f} items/exec", flush=True)
        loader.join()


if __name__ == "__main__":
    main()
