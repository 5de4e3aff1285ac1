"""Batch scoring next to real-time traffic on one server (issue 23's targets), on the wide MLP.

``python -m benchmarks.score_bench [--rows N] [--window-s S] [--out DIR]`` (or ``make bench-score``):

1. the in-process limit: the ONNX Runtime session alone, best batch size (``benchmarks.inprocess``);
2. alone: ``shipyard score`` through the runtime over gRPC at that batch size (rows/s of its summary),
   and ``shipyard score --repository`` in-process; target: served >= 0.8x the in-process limit;
3. real-time: a closed-loop gRPC client at c=16 (single-row requests, default priority), alone and while a
   batch job (``shipyard score``, lowest priority) runs throughout; target: its p99 with the job within
   1.25x of its p99 without, and the job keeps >= 50% of its alone throughput (rows written in the window);
4. killed and restarted: the scorer is SIGKILLed at a random point and run again; target: output rows =
   input rows, no duplicate keys.

The server is ``python -m shipyard.serving_runtime`` with the wide MLP at max_batch_size 128, one instance,
one ONNX Runtime thread, ``dynamic_batching { priority_levels: 2 default_priority_level: 1 }`` and the
background level's rows (what the publish step writes: slices and fill sized from the cost curve that step 1
measures, ``published_rows``; ``--slice-rows``, ``--fill-rows`` and ``--share-rows`` set them instead).
Results: ``score.json`` and ``score.md`` in ``--out``.

``--background-instances 1`` adds the idle lane (``serving_runtime/scheduling/idle_lane.py``): a second
instance that runs only the job's requests, on a thread at the OS's idle CPU priority (``--thread-priority``);
``--fill-rows 0`` turns co-batching off; ``--scorer-nice 0`` runs the job's client at normal priority; ``--no-lend``
keeps the lane for the job only (``background_lend 0``); ``--profile`` adds where the CPU went in each window.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common, score_profile, targets
from benchmarks.cpu_meter import MachineCPU
from benchmarks.loadgen import run_closed_loop
from benchmarks.score_profile import WindowProbe

MODEL = "wide_mlp"
MAX_BATCH = 128
TARGETS = {"served_vs_inprocess": 0.8, "p99_ratio": 1.25, "batch_share": 0.5}
REALTIME_YIELD = 0.8  # a closed loop whose latencies grow 1.25x (the p99 target) runs at >= 1 / 1.25 of its rate


def capacity_bound(capacity: float, realtime_use: float, limit_rows_per_s: float, alone_rows_per_s: float
                   ) -> tuple[float, float]:  # fmt: skip
    """An upper bound on the share of its alone throughput a batch job can get next to real-time traffic, from
    one resource (the machine's cores, or the model's instances' compute time): what real-time leaves of
    ``capacity``, each unit computing rows at the in-process limit (the best any row can cost: the session
    alone, the best batch, nothing else), over the job's alone rows/s. Then the same if real-time gave up
    ``1 - REALTIME_YIELD`` of its use, all that the p99 target lets a closed loop lose."""
    untouched = max(0.0, capacity - realtime_use) * limit_rows_per_s / alone_rows_per_s
    yielding = max(0.0, capacity - REALTIME_YIELD * realtime_use) * limit_rows_per_s / alone_rows_per_s
    return untouched, yielding


def log(message: str) -> None:
    print(f"[score-bench] {message}", file=sys.stderr, flush=True)


def write_repository(root: Path, model: common.ModelSpec, background: dict[str, Any]) -> Path:
    """The wide MLP with the benchmark's config plus the two priority levels and the ``background`` rules
    (``background_*`` parameters; 0 leaves one out); ``background_instances`` adds that many instances (the
    idle lane)."""
    version = root / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    if not (version / "model.onnx").exists():
        os.link(model.onnx_path, version / "model.onnx")
    parameters = "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in background.items()
        if value
    )
    config = targets.shipyard_config(model, MODEL).replace(
        "dynamic_batching { }", "dynamic_batching { priority_levels: 2 default_priority_level: 1 }\n" + parameters
    )
    assert "priority_levels" in config, config
    lane = int(background.get("background_instances") or 0)
    if lane:
        config = config.replace("count: 1 kind: KIND_CPU", f"count: {1 + lane} kind: KIND_CPU")
        assert f"count: {1 + lane}" in config, config
    (root / MODEL / "config.pbtxt").write_text(config)
    return root


def write_dataset(path: Path, rows: int, width: int) -> Path:
    """``rows`` rows: ``id`` (a shuffled unique int64) and ``x`` (a fixed-size list of ``width`` floats)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    ids = rng.permutation(rows * 4)[:rows].astype(np.int64)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), width))])) as writer:
        for start in range(0, rows, 8192):
            n = min(8192, rows - start)
            x = rng.standard_normal((n, width)).astype(np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)
            writer.write_table(pa.table({"id": pa.array(ids[start : start + n]), "x": column}))
    return path


def score_argv(data: Path, out: Path, *target: str, batch_size: int, part_rows: int = 1024) -> list[str]:
    """``shipyard score`` at ``batch_size`` rows per request (0: its defaults, from the model's config)."""
    sizing = ["--batch-size", str(batch_size)] if batch_size else []
    return common.python_module_argv(
        "shipyard", "score", str(data), "-o", str(out), "-m", MODEL, *target, "--key", "id", *sizing,
        "--part-rows", str(part_rows), "-q", "--overwrite",
    )  # fmt: skip


def run_scorer(argv: list[str]) -> dict[str, Any]:
    """Run ``shipyard score`` to the end; its JSON summary. Raises: RuntimeError when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=env, cwd=common.REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"shipyard score failed ({done.returncode}): {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def output_rows(out: Path) -> int:
    from shipyard.components.score.output import OutputStore

    return OutputStore(str(out)).rows() if out.exists() else 0


def realtime(port: int, model: common.ModelSpec, args: argparse.Namespace, scorer_pid: int | None = None
             ) -> dict[str, Any]:  # fmt: skip
    spec = targets.grpc_spec(port)(model)
    probe = None
    if args.profile:  # per-thread CPU and batch costs over the window's middle (benchmarks/score_profile.py)
        probe = WindowProbe(args.server_pid, port, MODEL, args.warmup_s, args.window_s, scorer_pid).start()
    computed, started = compute_seconds(port), time.monotonic()
    with MachineCPU() as meter:
        cell = run_closed_loop(spec, args.concurrency, args.warmup_s, args.window_s, client=args.client).as_dict()
    cell["machine_cores"] = meter.cores(skip_start=args.warmup_s + 0.5, skip_end=0.25)  # the window, every process
    cell["instance_busy"] = (compute_seconds(port) - computed) / (time.monotonic() - started)  # warm-up included
    if probe is not None:
        cell["profile"] = probe.result()
    return cell


def mixed(port: int, model: common.ModelSpec, data: Path, work: Path, batch_size: int,
          args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """The real-time client's window while a batch job runs; the job's rows/s over the same window."""
    out = work / f"mixed-{batch_size}"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's parts would count as progress
    argv = score_argv(data, out, "--url", f"{common.LOOPBACK}:{port}", batch_size=batch_size)
    # the job's client would run on its own machine (a pipeline pod); here it shares 2 cores: lowered as the
    # overload bench lowers its burst clients (common.lower_priority; autogroup: SHIPYARD_BENCH_CLIENT_SESSION=1)
    niceness = args.scorer_nice
    scorer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=common.REPO_ROOT,
                              env=dict(os.environ, OMP_NUM_THREADS="1"),
                              preexec_fn=(lambda: common.lower_priority(niceness)) if niceness else None)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while output_rows(out) == 0 and time.monotonic() < deadline and scorer.poll() is None:
            time.sleep(0.05)  # wait until the job is under way (its first part written)
        rows0, t0 = output_rows(out), time.monotonic()
        cell = realtime(port, model, args, scorer.pid)
        rows1, t1 = output_rows(out), time.monotonic()
        still_running = scorer.poll() is None
    finally:
        scorer.kill()
        scorer.wait(10)
    return {"realtime": cell, "batch_rows_per_s": (rows1 - rows0) / (t1 - t0), "batch_size": batch_size,
            "batch_ran_throughout": still_running, "same_as_alone": same_as_alone(port, model, data, out)}  # fmt: skip


def compute_seconds(port: int) -> float:
    """The model's compute time so far, every execution on every instance (statistics' ``batch_stats``)."""
    return sum(ns for _, ns in score_profile._stats(port, MODEL)["batches"].values()) / 1e9


def batch_counts(port: int) -> dict[int, int]:
    """Executions per batch size so far (the server's statistics): with an idle lane, a job alone shows whole
    requests (the lane's) and slice-sized pieces (borrowed by the real-time instances)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{port}")
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    client.close()
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}


def same_as_alone(port: int, model: common.ModelSpec, data: Path, out: Path, part_rows: int = 1024) -> dict[str, Any]:
    """The co-batched job's predictions against the job alone, by key and bit for bit: the last part the job
    wrote (while the real-time client ran: the job is killed when the window ends), scored again through the
    same server with nothing else running (128-row requests at the lowest priority)."""
    import numpy as np
    import pyarrow.parquet as pq
    import tritonclient.grpc as grpcclient

    written = sorted(out.glob("part-*.parquet"))
    if not written:
        return {"rows": 0, "identical": None}
    index = int(written[-1].stem.split("-")[1])
    got = pq.read_table(written[-1])
    source = pq.ParquetFile(data).read().slice(index * part_rows, got.num_rows)
    assert source.column("id").to_pylist() == got.column("id").to_pylist(), "part rows are not the input's rows"
    x = np.asarray(source.column("x").combine_chunks().flatten()).reshape(got.num_rows, -1)
    client = grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{port}")
    outputs = [name for name in got.column_names if name != "id"]
    alone: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, got.num_rows, 128):
        item = grpcclient.InferInput(model.inputs[0].name, list(x[start : start + 128].shape), "FP32")
        item.set_data_from_numpy(np.ascontiguousarray(x[start : start + 128]))
        answer = client.infer(MODEL, [item], priority=2)
        for name in outputs:
            alone[name].append(answer.as_numpy(name))
    client.close()
    identical = all(
        np.array_equal(np.concatenate(alone[name]).reshape(got.num_rows, -1),
                       np.asarray(got.column(name).combine_chunks().flatten()).reshape(got.num_rows, -1))
        for name in outputs
    )  # fmt: skip
    return {"rows": got.num_rows, "identical": identical}


def kill_and_restart(
    port: int, data: Path, work: Path, rows: int, batch_size: int, expected_s: float
) -> dict[str, Any]:
    """SIGKILL the scorer at a random point, run it again to the end; count rows and distinct keys."""
    import pyarrow.dataset as pads

    out = work / "killed"
    shutil.rmtree(out, ignore_errors=True)
    argv = score_argv(data, out, "--url", f"{common.LOOPBACK}:{port}", batch_size=batch_size)
    started = time.monotonic()
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=common.REPO_ROOT)
    while output_rows(out) == 0 and first.poll() is None and time.monotonic() - started < 120:
        time.sleep(0.02)  # under way: its first part is written
    time.sleep(random.uniform(0.1, 0.6) * expected_s)  # then a random point of the rest
    kill_after = time.monotonic() - started
    killed_running = first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    rows_at_kill = output_rows(out)
    summary = run_scorer([a for a in argv if a != "--overwrite"])
    keys = pads.dataset(str(out), format="parquet").to_table(columns=["id"]).column("id")
    distinct = len(set(keys.to_pylist()))
    return {"killed_after_s": round(kill_after, 2), "killed_while_running": killed_running,
            "rows_at_kill": rows_at_kill, "rows_resumed": summary["rows_resumed"], "rows": len(keys),
            "distinct_keys": distinct, "input_rows": rows, "ok": len(keys) == distinct == rows}  # fmt: skip


def published_rows(sweep: dict[str, float]) -> tuple[int, int, int]:
    """(share, slice, fill) rows that the publish step writes for the wide MLP at max_batch_size 128 from a
    validation profile like the in-process ``sweep`` (batch size -> inf/s; a call's time = batch / rate):
    ``recommend_batching``'s ``background_rows`` through ``background_rows_for``."""
    from shipyard.components.publish.config_builder import background_rows_for
    from shipyard.components.validate.profile import ProfileRow, background_rows

    rows = []
    for size, rate in sweep.items():
        if rate > 0:
            ms = 1000.0 * int(size) / rate
            rows.append(ProfileRow(int(size), 1, ms, ms, ms, rate))
    return background_rows_for(MAX_BATCH, background_rows(rows, MAX_BATCH) if rows else 0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.run import measure_inprocess

    model = common.load_model_spec(MODEL)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log("in-process limit ...")
    limit = measure_inprocess(model, args.inprocess_s)
    batch = int(args.batch_size)  # 0: shipyard score's defaults
    log(f"in-process limit {limit['best']:.0f} inf/s at batch {limit['best_batch']}; batch {batch or 'default'}")
    share, slice_rows, fill = published_rows(limit["sweep"])
    args.share_rows = share if args.share_rows is None else args.share_rows
    args.slice_rows = slice_rows if args.slice_rows is None else args.slice_rows
    args.fill_rows = fill if args.fill_rows is None else args.fill_rows
    data = write_dataset(work / "data.parquet", args.rows, model.inputs[0].dims[-1])
    background = {"background_holdoff_us": args.holdoff_us, "background_share_rows": args.share_rows,
                  "background_slice_rows": args.slice_rows, "background_slice_us": args.slice_us,
                  "background_fill_rows": args.fill_rows, "background_instances": args.background_instances,
                  "background_thread_priority": args.thread_priority if args.background_instances else "",
                  "background_lend": "0" if args.no_lend and args.background_instances else ""}  # fmt: skip
    repo = write_repository(work / "repo", model, background)
    meta = {"model": MODEL, "rows": args.rows, "batch_size": batch, "window_s": args.window_s,
            "concurrency": args.concurrency, "client": args.client, "background": background,
            "scorer_nice": args.scorer_nice, "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "autogroup": autogroup_state(), "cpus": os.cpu_count()}  # fmt: skip
    results: dict[str, Any] = {"meta": meta, "inprocess_limit": limit}
    inproc = run_scorer(score_argv(data, work / "inproc", "--repository", str(repo), batch_size=batch))
    results["alone_inprocess"] = inproc
    http_port, grpc_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "shipyard.serving_runtime", "--model-repository", str(repo), "--host", common.LOOPBACK,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
    )  # fmt: skip
    server = common.ServerProcess("shipyard", argv, work / "server.log", env={"OMP_NUM_THREADS": "1"})
    with common.running(server):
        server.wait_ready(targets.http_probe(http_port, "/v2/health/ready"), 120)
        args.server_pid = server.pid
        log("batch job alone ...")
        url = f"{common.LOOPBACK}:{grpc_port}"
        before = batch_counts(grpc_port)
        alone = run_scorer(score_argv(data, work / "alone", "--url", url, batch_size=batch))
        after = batch_counts(grpc_port)
        alone["batches"] = {size: n - before.get(size, 0) for size, n in after.items() if n - before.get(size, 0)}
        results["alone_served"] = alone
        big = write_dataset(work / "big.parquet", int(alone["rows_per_s"] * (args.warmup_s + args.window_s + 30)),
                            model.inputs[0].dims[-1])  # fmt: skip
        results["rounds"] = []
        for number in range(1, args.rounds + 1):  # interleaved: a drifting machine moves both sides of a ratio
            log(f"round {number}/{args.rounds}: real-time client alone ...")
            entry: dict[str, Any] = {"realtime_alone": realtime(grpc_port, model, args), "mixed": []}
            for size in [batch, *(b for b in args.mixed_batch_sizes if b != batch)]:
                log(f"round {number}/{args.rounds}: real-time client with the batch job at batch {size} ...")
                entry["mixed"].append(mixed(grpc_port, model, big, work, size, args))
            results["rounds"].append(entry)
        log("kill and restart ...")
        results["kill_restart"] = kill_and_restart(grpc_port, data, work, args.rows, batch,
                                                   args.rows / max(alone["rows_per_s"], 1.0))  # fmt: skip
    return results


def autogroup_state() -> str:
    """Whether the kernel groups CPU time by session ("on", "off" or "unknown"; ``sched_autogroup_enabled``).

    With it on, the idle lane's ``SCHED_IDLE`` yields only to the server's own threads: the server runs in
    a session of its own, so against the real-time client's session its group competes at equal weight and
    the lane takes half a core from the client when both want it (docs/scoring.md, "Session 15"). In a
    container the server is in a cgroup, where autogroup does not apply and the pod's weight does the same.
    """
    try:
        value = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "unknown"
    return {"0": "off", "1": "on"}.get(value, "unknown")


def report(results: dict[str, Any]) -> str:
    limit = results["inprocess_limit"]["best"]
    alone = results["alone_served"]["rows_per_s"]
    lines = [
        f"# Batch scoring next to real-time traffic ({MODEL}, {results['meta']['rows']} rows)", "",
        "Server background rules: " + (", ".join(f"{k} {v}" for k, v in results["meta"]["background"].items() if v)
                                        or "none") + f"; scorer nice {results['meta'].get('scorer_nice', '?')}; "
        f"load average at the start {results['meta'].get('loadavg', '?')}; "
        f"kernel autogroup {results['meta'].get('autogroup', '?')}", "",
        "| measurement | value | target | pass |", "|---|---|---|---|",
        f"| in-process limit (batch {results['inprocess_limit']['best_batch']}) | {limit:,.0f} rows/s | | |",
        f"| shipyard score --repository (in-process) | {results['alone_inprocess']['rows_per_s']:,.0f} rows/s "
        f"({results['alone_inprocess']['rows_per_s'] / limit:.2f}x limit) | >= {TARGETS['served_vs_inprocess']}x | "
        f"{results['alone_inprocess']['rows_per_s'] / limit >= TARGETS['served_vs_inprocess']} |",
        f"| shipyard score over gRPC, alone (batch {results['meta']['batch_size'] or 'default'}) | {alone:,.0f} rows/s "
        f" ({alone / limit:.2f}x limit) | "
        f">= {TARGETS['served_vs_inprocess']}x | {alone / limit >= TARGETS['served_vs_inprocess']} |",
        "| batches while the job ran alone (rows x executions) | "
        + (", ".join(f"{size} x {n}" for size, n in sorted(results["alone_served"].get("batches", {}).items(),
                                                            key=lambda item: -int(item[0]))) or "?") + " | | |",
    ]  # fmt: skip
    ratios: dict[Any, list[tuple[float, float]]] = {}
    for number, entry in enumerate(results["rounds"], 1):
        rt_alone = entry["realtime_alone"]
        lines.append(f"| round {number}: real-time c={results['meta']['concurrency']} alone | p99 "
                     f"{rt_alone['p99_ms']:.2f} ms, p50 {rt_alone['p50_ms']:.2f} ms, {rt_alone['throughput']:,.0f} "
                     "req/s | | |")  # fmt: skip
        for cell in entry["mixed"]:
            p99, size = cell["realtime"]["p99_ms"], cell["batch_size"] or "default"
            ratio, share = p99 / rt_alone["p99_ms"], cell["batch_rows_per_s"] / alone
            ratios.setdefault(size, []).append((ratio, share))
            lines.append(
                f"| round {number}: real-time with the batch job (batch {size}) | p99 {p99:.2f} ms ({ratio:.2f}x), "
                f"p50 {cell['realtime']['p50_ms']:.2f} ms, {cell['realtime']['throughput']:,.0f} req/s; job "
                f"{cell['batch_rows_per_s']:,.0f} rows/s ({share:.2f}x alone"
                f"{'' if cell['batch_ran_throughout'] else ', finished early'}) | | |"
            )  # fmt: skip
    for size, pairs in ratios.items():
        ratio, share = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        spread_r = f"{min(p[0] for p in pairs):.2f}-{max(p[0] for p in pairs):.2f}"
        spread_s = f"{min(p[1] for p in pairs):.2f}-{max(p[1] for p in pairs):.2f}"
        lines += [
            f"| real-time p99 with / without the job (batch {size}), median of {len(pairs)} per-round ratios "
            f"(range {spread_r}) | {ratio:.2f}x | <= {TARGETS['p99_ratio']}x | {ratio <= TARGETS['p99_ratio']} |",
            f"| batch job next to real-time / alone (batch {size}), median of {len(pairs)} (range {spread_s}) | "
            f"{share:.2f}x | >= {TARGETS['batch_share']}x | {share >= TARGETS['batch_share']} |",
        ]  # fmt: skip
    lines += capacity_lines(results)
    same = [cell["same_as_alone"] for entry in results["rounds"] for cell in entry["mixed"] if "same_as_alone" in cell]
    if same:
        rows, identical = sum(c["rows"] for c in same), all(c["identical"] is not False for c in same)
        lines.append(f"| predictions of the job next to real-time = the job alone (by key, bit for bit) | {rows} rows "
                     f"compared | equal | {identical} |")  # fmt: skip
    kill = results["kill_restart"]
    done = kill["rows_at_kill"] >= kill["input_rows"] or not kill["killed_while_running"]
    finished = "; every part was written: the resume was not exercised" if done else ""
    lines.append(f"| killed after {kill['killed_after_s']} s ({kill['rows_at_kill']} rows written{finished}), "
                 "restarted | "
                 f"{kill['rows']} rows, {kill['distinct_keys']} distinct keys, input {kill['input_rows']} | equal | "
                 f"{kill['ok']} |")  # fmt: skip
    profiled = [
        (number, entry) for number, entry in enumerate(results["rounds"], 1) if "profile" in entry["realtime_alone"]
    ]
    if profiled:
        lines += ["", "Where the CPU went (share of one CPU, ran + waited runnable; middle of each window) and the "
                  "model's executions by batch rows (per second x mean compute):", "",
                  "| window | threads | executions |", "|---|---|---|"]  # fmt: skip
        for number, entry in profiled:
            lines += score_profile.lines(f"round {number}: alone", entry["realtime_alone"]["profile"])
            for cell in entry["mixed"]:
                lines += score_profile.lines(f"round {number}: with the job", cell["realtime"].get("profile", {}))
    return "\n".join(lines) + "\n"


def capacity_lines(results: dict[str, Any]) -> list[str]:
    """The report's rows for ``capacity_bound`` (the machine's cores, the instances' compute time), for what
    was measured in every real-time window."""
    meta = results["meta"]
    limit, alone = results["inprocess_limit"]["best"], results["alone_served"]["rows_per_s"]
    resources = (
        ("machine_cores", "cores", float(meta.get("cpus") or os.cpu_count() or 1), "every process, /proc/stat"),
        ("instance_busy", "instances' compute time", float(1 + int(meta["background"].get("background_instances")
                                                                   or 0)), "the model's batch_stats"),
    )  # fmt: skip
    lines = []
    for key, what, capacity, source in resources:
        realtime = [entry["realtime_alone"].get(key) for entry in results["rounds"]]
        if not realtime or None in realtime:
            continue
        used = statistics.median(realtime)
        untouched, yielding = capacity_bound(capacity, used, limit, alone)
        lines.append(
            f"| {what} left for the job: ({capacity:g} - real-time alone's {used:.2f} ({source}), median of "
            f"{len(realtime)} windows) x the in-process limit / the job alone's rows/s | at most {untouched:.2f}x "
            f"its alone throughput with real-time untouched; {yielding:.2f}x if real-time gave up "
            f"{1 - REALTIME_YIELD:.0%} | >= {TARGETS['batch_share']}x reachable | "
            f"{yielding >= TARGETS['batch_share']} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60000, help="rows of the data set scored alone")
    parser.add_argument("--window-s", type=float, default=15.0, help="real-time measurement window")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--inprocess-s", type=float, default=1.0, help="seconds per batch size (in-process sweep)")
    parser.add_argument("--concurrency", type=int, default=16, help="real-time client concurrency")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="rows per batch request (0: shipyard score's default, the model's max_batch_size here)",
    )
    parser.add_argument("--mixed-batch-sizes", type=lambda s: [int(v) for v in s.split(",") if v], default=[],
                        help="more batch sizes to run next to the real-time client, e.g. 32,8")  # fmt: skip
    parser.add_argument(
        "--client",
        default="auto",
        choices=("auto", "python", "native"),
        help="real-time load client (auto: the C++ client when built, `make bench-client`: it "
        "leaves the 2-core machine's CPU to the server and the batch job)",
    )
    published = "default: what the publish step writes from the in-process cost curve (published_rows)"
    parser.add_argument("--slice-rows", type=int, default=None, help=f"background_slice_rows (0: off; {published})")
    parser.add_argument("--fill-rows", type=int, default=None, help="background_fill_rows: real-time batches topped "
                        f"up with job rows to it (0: off; {published})")  # fmt: skip
    parser.add_argument("--share-rows", type=int, default=None, help=f"background_share_rows ({published})")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of real-time alone / with the job")
    parser.add_argument("--scorer-nice", type=int, default=10, help="niceness of the batch job next to the "
                        "real-time client (0: none; its client would run on its own machine)")  # fmt: skip
    parser.add_argument("--slice-us", type=int, default=0, help="background_slice_us (0: none; slices sized by "
                        "time, starting from --slice-rows)")  # fmt: skip
    parser.add_argument("--background-instances", type=int, default=0, help="background_instances: an idle lane "
                        "of that many more instances for background work only (0: none)")  # fmt: skip
    parser.add_argument("--thread-priority", default="idle", choices=("idle", "nice", "normal"),
                        help="background_thread_priority of the idle lane's threads")  # fmt: skip
    parser.add_argument("--no-lend", action="store_true", help="background_lend 0: the idle lane takes no "
                        "real-time work (real-time has the same instances with and without the job)")  # fmt: skip
    parser.add_argument("--holdoff-us", type=int, default=0, help="background_holdoff_us (default 0: none)")
    parser.add_argument("--workdir", default="/tmp/shipyard-score-bench")
    parser.add_argument("--out", default=str(common.REPO_ROOT / "benchmarks" / "results" / "score"))
    parser.add_argument("--profile", action="store_true", help="per-thread CPU and batch costs of each real-time "
                        "window (benchmarks/score_profile.py): where the tail comes from")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a short check that it works (numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.client == "auto":
        from benchmarks import native_client

        args.client = "python" if native_client.unavailable_reason("grpc") else "native"
    if args.quick:
        args.rows, args.window_s, args.warmup_s, args.inprocess_s, args.rounds = 4000, 3.0, 1.0, 0.3, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    finally:
        common.stop_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score.json").write_text(json.dumps(results, indent=2, default=str))
    text = report(results)
    (out / "score.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
