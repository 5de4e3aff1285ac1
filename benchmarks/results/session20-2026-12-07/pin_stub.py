"""Pin ``mlp_py``'s model process and the server's threads per window under load and print the rate
(session 20).

    PYTHONPATH=. python benchmarks/results/session20-2026-12-07/pin_stub.py CONCURRENCY [mlp_py|pipeline]

Serves ``benchmarks.python_models``' repository in shipyard, loads the model over gRPC with the C++
closed-loop client and, twice over ``PLANS``, sets the CPU affinity of the Python-model processes
(``stub``), the event loop (``python``), ``grpc-writer`` and the server's other threads for a 6 s window
each, printing the rate, the items per execution and the MLP's compute busy share from the statistics.
Linux only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from thread_cpu import serve

from benchmarks import score_profile, stub_profile
from benchmarks.loadgen import run_closed_loop

BOTH = {0, 1}
FREE = {"stub": BOTH, "loop": BOTH, "writer": BOTH, "rest": BOTH}
PLANS: list[tuple[str, dict[str, set[int]]]] = [
    ("free", FREE),
    ("stub1 loop0 writer0", {"stub": {1}, "loop": {0}, "writer": {0}, "rest": BOTH}),
    ("free", FREE),
    ("stub1 loop0 writer0 rest0", {"stub": {1}, "loop": {0}, "writer": {0}, "rest": {0}}),
    ("free", FREE),
    ("stub1 rest free", {"stub": {1}, "loop": BOTH, "writer": BOTH, "rest": BOTH}),
]
WINDOW_S = 6.0


def pin(pid: int, cpus: set[int], role: str | None = None) -> None:
    """Set the affinity of ``pid``'s threads (only those of ``role`` when given)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        kind = "loop" if comm == "python" else "writer" if comm == "grpc-writer" else "rest"
        if role is None or role == kind:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass


def main() -> None:
    concurrency = int(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else "mlp_py"
    server, port, load = serve(model)  # the script's directory is on sys.path
    step = "mlp_step" if model == "pipeline" else "mlp_py"
    try:
        seconds = WINDOW_S * len(PLANS) * 2 + 6
        loader = threading.Thread(target=lambda: run_closed_loop(load, concurrency, 1.0, seconds, 2, "native"))
        loader.start()
        time.sleep(3)
        children = score_profile._children(server.pid)
        for _ in range(2):
            for name, plan in PLANS:
                for child in children:
                    pin(child, plan["stub"])
                for role in ("loop", "writer", "rest"):
                    pin(server.pid, plan[role], role)
                time.sleep(1)
                before, started = stub_profile.compute_ns(port, step), time.monotonic()
                time.sleep(WINDOW_S - 1)
                after, wall = stub_profile.compute_ns(port, step), time.monotonic() - started
                assert before is not None and after is not None
                rows, runs = after[1] - before[1], after[2] - before[2]
                busy = (after[0] - before[0]) / (wall * 1e9)
                print(f"{name:28s} {rows / wall:8.0f} inf/s {rows / max(1, runs):5.1f} items/exec busy {busy:.0%}")
        loader.join()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
