"""Per-thread CPU of shipyard serving ``benchmarks.python_models``' repository under one closed-loop cell
(session 20).

    PYTHONPATH=. python benchmarks/results/session20-2026-12-07/thread_cpu.py CONCURRENCY [mlp_py|pipeline]

Loads the model over gRPC with the C++ client for 8 s and, over 4 s in the middle, reads
``/proc/PID/task/TID/schedstat`` (time on a CPU, time waiting for one) of every thread of the server and
of its Python-model processes. Prints each thread's share of one CPU, its wait and its CPU per request.
Linux only.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common, python_models, score_profile
from benchmarks.loadgen import CellResult, LoadSpec, run_closed_loop

Key = tuple[int, int]


def snapshot(pids: list[int]) -> dict[Key, tuple[str, int, int]]:
    """(pid, tid) -> (thread name, ns on a CPU, ns waiting for one)."""
    out: dict[Key, tuple[str, int, int]] = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                run, wait, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except OSError:
                continue
            out[(pid, int(tid))] = (comm, int(run), int(wait))
    return out


def serve(model: str) -> tuple[Any, int, LoadSpec]:
    """shipyard serving ``benchmarks.python_models``' repository: (server, its gRPC port, ``model``'s load)."""
    mlp = common.load_model_spec("wide_mlp")
    work = Path(tempfile.mkdtemp(prefix="session20-"))
    repo = python_models.write_repository(work / "repo", mlp, for_triton=False)
    server, port = python_models._start_shipyard(repo, work)
    spec = python_models._pipeline_spec(mlp) if model == "pipeline" else mlp
    return server, port, LoadSpec("grpc", port, common.grpc_request_bytes(spec, model_name=model))


def main() -> None:
    concurrency = int(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else "mlp_py"
    server, _, load = serve(model)
    try:
        cells: list[CellResult] = []
        loader = threading.Thread(
            target=lambda: cells.append(run_closed_loop(load, concurrency, 1.0, 8.0, 2, "native"))
        )
        loader.start()
        time.sleep(3)
        pids = [server.pid, *score_profile._children(server.pid)]
        before = snapshot(pids)
        started = time.monotonic()
        time.sleep(4)
        after = snapshot(pids)
        wall = time.monotonic() - started
        loader.join()
        rate = cells[0].throughput
        print(f"{model} c={concurrency}: {rate:.0f} inf/s")
        rows = []
        for key, (comm, run, wait) in after.items():
            if key in before and run - before[key][1] > 0.005 * wall * 1e9:
                rows.append((run - before[key][1], wait - before[key][2], key, comm))
        total = 0
        for ran, waited, key, comm in sorted(rows, reverse=True):
            total += ran
            where = "server" if key[0] == server.pid else f"model process {key[0]}"
            print(f"  {comm:18s} {ran / wall / 1e9:6.1%} cpu  wait {waited / wall / 1e9:6.1%}  "
                  f"{ran / wall / rate / 1e3:7.1f} us/req  [{where}]")  # fmt: skip
        print(f"  total {total / wall / 1e9:.2f} cores, {total / wall / rate / 1e3:.0f} us/req")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
