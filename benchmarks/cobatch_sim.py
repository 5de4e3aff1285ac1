"""Co-batching against slices alone, on the real dynamic batcher with a model that costs what the wide MLP
does: ``python -m benchmarks.cobatch_sim [--window-s S] [--rounds N]``.

The instance sleeps for the wide MLP's measured call time at the batch's size (one ORT thread, docs/scoring.md:
2.38 ms for 1 row, 2.53 for 8, 2.89 for 16, 3.68 for 24, 4.93 for 32, 9.54 for 64, ~20 for 128; linear in
between), so the figures depend on the scheduling rules and hardly on the load of the machine it runs on
(a sleep needs no CPU). In one process: ``--concurrency`` closed-loop real-time callers (single rows, default
priority, each sent again a random pause after its answer: uniform in 0..2x ``--think-ms``, so the callers
drift apart as over a network and real-time batches hold ~5 rows, as on the quiet machine at c=16;
``--loop-us`` adds event-loop CPU per request) alone, then next to a batch job (128-row requests at the
lowest priority, 4 in flight), and the job alone; for each ``background_fill_rows`` in ``--fills`` (slices
of 16 and share 8, as published). Prints one JSON line per round and fill, and a summary: real-time p99
with / without the job, the job next to real-time / alone (alone here is the ORT limit at 128 rows, ~6,000
rows/s; the served job alone is ~4,000 on the quiet machine, so the served share is higher for the same
rows). A model of the scheduling, not of the server: the gRPC transport, decoding and the job's client are
left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

COST_MS = ((1, 2.38), (8, 2.53), (16, 2.89), (24, 3.68), (32, 4.93), (64, 9.54), (128, 20.0))
WIDTH = 4


class WideMlpCost:
    """Sleeps the wide MLP's call time for the batch's rows; returns the input."""

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        rows = inputs["x"].shape[0]
        time.sleep(float(np.interp(rows, [r for r, _ in COST_MS], [c for _, c in COST_MS])) / 1000)
        return {"y": inputs["x"]}

    def close(self) -> None:
        pass


def make_batcher(fill: int, slice_rows: int, share: int) -> object:
    from shipyard.serving_runtime.config import parse_config_text
    from shipyard.serving_runtime.scheduling import create_scheduler

    parameters = {"background_slice_rows": slice_rows, "background_share_rows": share, "background_fill_rows": fill}
    text = (
        f'name: "m" max_batch_size: 128 input {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} '
        f'output {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} '
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 } "
        + " ".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items() if v)
    )
    return create_scheduler(parse_config_text(text), [WideMlpCost()], "m", 1)


async def realtime(
    batcher: object, concurrency: int, think_s: float, loop_s: float, stop: asyncio.Event
) -> list[float]:
    from shipyard.serving_runtime.scheduling import InferenceRequest

    latencies: list[float] = []

    async def caller() -> None:
        x = np.zeros((1, WIDTH), np.float32)
        while not stop.is_set():
            started = time.perf_counter()
            while time.perf_counter() - started < loop_s:  # the server's own work per request, on its loop
                pass
            await batcher.submit(InferenceRequest(inputs={"x": x}, batch_size=1))  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(random.uniform(0, 2 * think_s))  # callers drift apart, as over a network

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


async def job(batcher: object, stop: asyncio.Event, counter: list[int], inflight: int = 4) -> None:
    from shipyard.serving_runtime.scheduling import InferenceRequest

    async def sender() -> None:
        x = np.zeros((128, WIDTH), np.float32)
        while not stop.is_set():
            request = InferenceRequest(inputs={"x": x}, batch_size=128, priority=2)
            await batcher.submit(request)  # type: ignore[attr-defined]
            counter[0] += 128
            await asyncio.sleep(0.001)  # the client's own work per answer

    await asyncio.gather(*(sender() for _ in range(inflight)))


async def window(fill: int, args: argparse.Namespace, with_rt: bool, with_job: bool) -> dict[str, float]:
    batcher = make_batcher(fill, args.slice_rows, args.share_rows)
    stop = asyncio.Event()
    counter = [0]
    tasks: list[asyncio.Future[Any]] = []
    if with_rt:
        callers = realtime(batcher, args.concurrency, args.think_ms / 1000, args.loop_us / 1e6, stop)
        tasks.append(asyncio.ensure_future(callers))
    if with_job:
        tasks.append(asyncio.ensure_future(job(batcher, stop, counter)))
    await asyncio.sleep(args.warmup_s)
    counter[0] = 0
    mark = time.perf_counter()
    await asyncio.sleep(args.window_s)
    rows, seconds = counter[0], time.perf_counter() - mark
    stop.set()
    results = await asyncio.gather(*tasks)
    batcher.close()  # type: ignore[attr-defined]
    stats = batcher.stats  # type: ignore[attr-defined]
    sizes = {size: duration.count for size, duration in sorted(stats.batch_stats.items())}
    out: dict[str, float] = {"job_rows_per_s": rows / seconds, "mean_batch": stats.inference_count / max(
        stats.execution_count, 1), "executions": stats.execution_count, "top_sizes": sorted(
        sizes, key=lambda k: -sizes[k])[:4]}  # type: ignore[dict-item]  # fmt: skip
    if with_rt:
        latencies = sorted(results[0][-int(len(results[0]) * args.window_s / (args.window_s + args.warmup_s)) :])
        out["rt_p99_ms"] = latencies[int(len(latencies) * 0.99)] * 1000
        out["rt_p50_ms"] = latencies[len(latencies) // 2] * 1000
        out["rt_per_s"] = len(latencies) / args.window_s
    return out


async def run(args: argparse.Namespace) -> None:
    summary: dict[int, list[tuple[float, float]]] = {}
    for number in range(1, args.rounds + 1):
        for fill in args.fills:
            alone = await window(fill, args, True, False)
            mixed = await window(fill, args, True, True)
            job_alone = await window(fill, args, False, True)
            ratio = mixed["rt_p99_ms"] / alone["rt_p99_ms"]
            share = mixed["job_rows_per_s"] / job_alone["job_rows_per_s"]
            summary.setdefault(fill, []).append((ratio, share))
            print(json.dumps({"round": number, "fill": fill, "rt_alone": alone, "rt_with_job": mixed,
                              "job_alone": job_alone["job_rows_per_s"], "p99_ratio": round(ratio, 3),
                              "job_share": round(share, 3)}), flush=True)  # fmt: skip
    for fill, pairs in summary.items():
        print(f"fill {fill}: real-time p99 with / without the job {statistics.median(p[0] for p in pairs):.2f}x "
              f"(target <= 1.25x), job next to real-time / alone {statistics.median(p[1] for p in pairs):.2f}x "
              f"(target >= 0.5x), median of {len(pairs)}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fills", type=lambda s: [int(v) for v in s.split(",")], default=[16, 0])
    parser.add_argument("--slice-rows", type=int, default=16)
    parser.add_argument("--share-rows", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--think-ms", type=float, default=4.0,
                        help="a real-time caller's mean pause between requests (uniform in 0..2x)")  # fmt: skip
    parser.add_argument("--loop-us", type=float, default=0.0, help="the server loop's CPU per real-time request")
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
