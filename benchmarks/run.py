"""``make bench``: the side-by-side serving benchmark (see benchmarks/README.md).

    python -m benchmarks.run [--quick] [--models wide_mlp,add_sub,resnet_cnn]
                             [--targets echo,echo-cpp,kserve,mlserver,triton,shipyard] [--no-overload] [--out DIR]

For each model: the in-process limit, then each target's server in its own process, measured over
each of its protocols at concurrency 1, 16 and 64 (closed loop, warm-up then a fixed window), then
the overload scenario on shipyard (a few greedy connections, then many). Writes ``latest.json``,
``latest.md`` and ``latest.png`` to ``--out`` (default ``benchmarks/results``) and prints the markdown.
Every server process is killed at the end, also on error or Ctrl-C. Exit code 0 when every target
ran, 1 when one could not.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import common, reference_targets, report, targets
from benchmarks.common import ModelSpec
from benchmarks.loadgen import CLIENTS, CellResult, LoadSpec, run_closed_loop

DEFAULT_MODELS = ("wide_mlp", "add_sub", "resnet_cnn")
QUICK_MODELS = ("wide_mlp", "add_sub")
CONCURRENCY = (1, 16, 64)
ROUND_CONCURRENCY = CONCURRENCY  # the interleaved rounds: every concurrency an issue target names
OVERLOAD_MODEL = "wide_mlp"
OVERLOAD_QUEUE = 256
# The overload runs twice: the burst from one connection per client process (a few greedy clients,
# which the server's per-connection stream limit holds back) and from this many per process (the
# same load from many clients, which only the server-wide limits and the queue can refuse).
OVERLOAD_MANY_CONNECTIONS = 8
DEFAULT_OUT = common.REPO_ROOT / "benchmarks" / "results"
# The second shipyard target --shipyard-python adds: the same server run by another interpreter.
PIP_TARGET = "shipyard-pip"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short windows; wide_mlp and add_sub only")
    parser.add_argument("--models", help=f"comma-separated zoo models (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument(
        "--targets",
        default=",".join(targets.TARGET_NAMES),
        help=f"comma-separated targets (default {','.join(targets.TARGET_NAMES)})",
    )
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per cell (default 1.5; quick 0.5)")
    parser.add_argument("--window", type=float, help="seconds measured per cell (default 4; quick 1.5)")
    parser.add_argument("--client-procs", type=int, default=2, help="load-generator processes per cell")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="native",
        help="closed-loop clients: native (C++ for gRPC and REST, `make bench-client`; the default) or python "
        "(grpc.aio and aiohttp)",
    )
    parser.add_argument("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (default 1)")
    parser.add_argument("--mlserver-max-batch", type=int, default=128, help="MLServer max_batch_size (default 128)")
    parser.add_argument(
        "--mlserver-max-batch-time-ms", type=float, default=5.0, help="MLServer max_batch_time in ms (default 5)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of the gRPC cells after the sweep, every target up at once (default 3; quick 0); "
        "the issue targets are decided on their medians",
    )
    parser.add_argument(
        "--round-concurrency",
        default=",".join(map(str, ROUND_CONCURRENCY)),
        help="the concurrencies each interleaved round measures (default 1,16,64: every concurrency an issue "
        "target names; one cell alone swings by 30%% or more between runs on this machine)",
    )
    parser.add_argument(
        "--shipyard-grpc-frontend",
        choices=("auto", "native", "aio"),
        default="auto",
        help="shipyard's --grpc-frontend: native (grpc++, `make native`), aio (grpc.aio) or auto (native when built)",
    )
    parser.add_argument(
        "--shipyard-args",
        default="",
        help='more command-line flags for shipyard\'s server, e.g. "--grpc-max-streams-per-connection 32"',
    )
    parser.add_argument(
        "--shipyard-published",
        action="store_true",
        help="serve shipyard's models with the publish step's batching (two priority levels, plain requests at "
        "level 1, level 2 a background level), as every published model is",
    )
    parser.add_argument(
        "--shipyard-python",
        help="also measure a second shipyard target, shipyard-pip, run by this interpreter (a fresh venv's after "
        "`pip install .[serve]`: `python -m benchmarks.pip_venv DIR` builds one), in the sweep and in the same "
        "interleaved rounds as the source tree's shipyard; the report prints shipyard-pip / shipyard per round",
    )
    parser.add_argument(
        "--pause-others",
        action="store_true",
        help="in the interleaved rounds, stop the other targets' process groups (SIGSTOP, Triton's Python-backend "
        "stubs included) for each cell and continue them after (default: leave them running; the report prints "
        "the CPU they used during each cell either way)",
    )
    parser.add_argument("--no-overload", action="store_true", help="skip the overload scenario")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--note", default="", help="a note printed at the top of the report")
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="do not copy the table into benchmarks/README.md (default: copy when writing to the default --out)",
    )
    args = parser.parse_args(argv)
    args.models = [m for m in (args.models or ",".join(QUICK_MODELS if args.quick else DEFAULT_MODELS)).split(",") if m]
    args.targets = [t for t in args.targets.split(",") if t]
    if args.shipyard_python and PIP_TARGET not in args.targets:
        args.targets.append(PIP_TARGET)
    if PIP_TARGET in args.targets and not args.shipyard_python:
        hint = "`python -m benchmarks.pip_venv VENV` builds one"
        parser.error(f"target {PIP_TARGET} needs --shipyard-python VENV/bin/python ({hint})")
    unknown = sorted(set(args.targets) - {*targets.TARGET_NAMES, PIP_TARGET})
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {', '.join(targets.TARGET_NAMES)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.round_concurrency = [int(c) for c in args.round_concurrency.split(",") if c]
    if any(c < 1 for c in args.round_concurrency):
        parser.error(f"--round-concurrency must be positive integers, got {args.round_concurrency}")
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.5)
    args.window = args.window if args.window is not None else (1.5 if args.quick else 4.0)
    args.rounds = args.rounds if args.rounds is not None else (0 if args.quick else 3)
    if args.rounds < 0:
        parser.error(f"--rounds must be >= 0, got {args.rounds}")
    if args.client == "native":
        from benchmarks import native_client

        reason = native_client.unavailable_reason()
        if reason is not None:
            parser.error(reason)
    return args


def log(message: str) -> None:
    print(message, flush=True)


def _meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    load1 = os.getloadavg()[0]
    note = args.note
    if load1 > 0.5 * cpus:
        busy = (
            f"the machine was busy when the run started (load average {load1:.1f} on {cpus} CPUs): "
            "treat these as smoke numbers, not measurements."
        )
        note = f"{note} {busy}".strip()
    return {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *(shlex.quote(a) for a in argv)]),
        "commit": common.git_commit(),
        "cpus": cpus,
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "load_average_at_start": load1,
        "models": args.models,
        "targets": args.targets,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "client_procs": args.client_procs,
        "client": args.client,
        "rest_client": args.client,
        "shipyard_args": args.shipyard_args,  # the C++ HTTP client with "native" since it was added
        "shipyard_published": args.shipyard_published,
        "rounds": args.rounds,
        "round_concurrency": args.round_concurrency,
        "rounds_pause_others": args.pause_others,
        "shipyard_python": args.shipyard_python,
        "note": note,
    }


def measure_inprocess(model: ModelSpec, seconds: float) -> dict[str, Any]:
    """The in-process limit of ``model``, measured in a subprocess.

    Raises: RuntimeError when the subprocess fails.
    """
    argv = common.python_module_argv("benchmarks.inprocess", "--onnx", str(model.onnx_path), "--seconds", str(seconds))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=common.REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"in-process measurement of {model.name} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def build_target(name: str, models: list[ModelSpec], workdir: Path, args: argparse.Namespace) -> targets.Target:
    """Build (not start) the named target. Raises: TargetUnavailable when it cannot run here."""
    if name == "echo":
        return targets.echo_target(models, workdir)
    if name == "kserve":
        return targets.kserve_target(models, workdir)
    if name == "triton":
        return reference_targets.triton_target(models, workdir)
    if name == "echo-cpp":
        return reference_targets.echo_cpp_target(models, workdir)
    if name == "mlserver":
        return targets.mlserver_target(
            models, workdir, args.mlserver_workers, args.mlserver_max_batch, args.mlserver_max_batch_time_ms / 1000
        )
    overload = next((m for m in models if m.name == OVERLOAD_MODEL), None)
    target = targets.shipyard_target(
        models,
        workdir,
        overload,
        OVERLOAD_QUEUE,
        args.shipyard_grpc_frontend,
        args.shipyard_python if name == PIP_TARGET else None,
        published=args.shipyard_published,
        name=name,
    )
    target.server.argv.extend(shlex.split(args.shipyard_args))
    return target


def run_target(
    target: targets.Target, models: list[ModelSpec], args: argparse.Namespace, results: dict[str, Any]
) -> None:
    """Start ``target``, sweep every model/protocol/concurrency, run the overload on shipyard, stop it."""
    started = time.monotonic()
    with common.running(target.server):
        target.server.wait_ready(target.probe, target.startup_timeout_s)
        log(f"[{target.name}] ready after {time.monotonic() - started:.1f} s (pid {target.server.pid})")
        for model in models:
            for protocol, make_spec in target.specs.items():
                spec = make_spec(model)
                for c in args.concurrency:
                    if not target.server.alive():
                        raise RuntimeError(f"{target.name} died during the run; log:\n{target.server.log_tail()}")
                    cell = _measure(spec, c, args)
                    row = {"target": target.name, "protocol": protocol, "model": model.name, **cell.as_dict()}
                    results["cells"].append(row)
                    log(
                        f"  {target.name:9s} {protocol:9s} {model.name:10s} c={c:<3d} {cell.throughput:9.0f} inf/s  "
                        f"p50 {_ms(cell.p50_ms)}  p99 {_ms(cell.p99_ms)}  errors {cell.errors}"
                        + (f"  e.g. {cell.error_samples[0]}" if cell.error_samples else "")
                    )
        if target.name == "shipyard" and not args.no_overload:
            overload_model = next((m for m in models if m.name == OVERLOAD_MODEL), None)
            if overload_model is None:
                results["overload"] = {"status": "skipped", "message": f"needs model {OVERLOAD_MODEL} in --models"}
                return
            # The capacity the burst is 10x of: the sweep's c=64 cell when it ran one (a lower concurrency is
            # not the capacity: with --concurrency 1 the "burst" was 10x the c=1 rate and nothing was refused).
            # None: the first scenario measures it at c=64, and the second reuses that measurement.
            top = report.find_cell(results, "shipyard", "grpc", OVERLOAD_MODEL, 64) if 64 in args.concurrency else None
            capacity = top["throughput"] if top and top.get("completed") else None
            from benchmarks.overload import run_overload

            for key, connections in (("overload", 1), ("overload_many", OVERLOAD_MANY_CONNECTIONS)):
                log(
                    f"[{key}] {OVERLOAD_MODEL}{targets.OVERLOAD_SUFFIX}, max_queue_size {OVERLOAD_QUEUE}, "
                    f"{connections} connection(s) per burst process"
                )
                results[key] = o = run_overload(
                    target.ports["grpc"],
                    target.ports["rest"],
                    target.server.pid,
                    overload_model,
                    OVERLOAD_MODEL + targets.OVERLOAD_SUFFIX,
                    OVERLOAD_QUEUE,
                    capacity,
                    duration_s=2.0 if args.quick else 3.0,
                    window_s=args.window,
                    processes=args.client_procs,
                    connections=connections,
                    client=args.client,
                )
                capacity = o["capacity"]
                log(
                    f"  sent {o['sent']} at {o['offered_rate']:.0f} req/s: {o['outcomes']}; lost {o['lost']}; "
                    f"RSS {report.fmt(o['rss_before_mb'])} -> peak {report.fmt(o['rss_peak_mb'])} MB; after-burst "
                    f"{o['after']['throughput']:.0f} inf/s"
                )


def run_rounds(
    names: list[str], models: list[ModelSpec], workdir: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Start every target in ``names`` at once, then ``args.rounds`` times measure each (concurrency
    of ``args.round_concurrency``, model, target) over gRPC, rotating the targets' order each round;
    stop them. Returns one row per measurement.

    Raises: RuntimeError when a target does not start or dies; TargetUnavailable.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    started = [build_target(name, models, workdir, args) for name in names]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        for target in started:
            stack.enter_context(common.running(target.server))
        for target in started:
            target.server.wait_ready(target.probe, target.startup_timeout_s)
        levels = ", ".join(map(str, args.round_concurrency))
        log(f"[rounds] {', '.join(names)} up; {args.rounds} rounds at gRPC c={levels}")
        for number in range(args.rounds):
            shift = number % len(started)
            order = started[shift:] + started[:shift]
            for c, model in itertools.product(args.round_concurrency, models):
                for target in order:
                    if not target.server.alive():
                        raise RuntimeError(f"{target.name} died during the rounds; log:\n{target.server.log_tail()}")
                    others = [t for t in started if t is not target]
                    cell, others_cpu = _measure_alone(target.specs["grpc"](model), c, args, others)
                    rows.append(
                        {
                            "round": number,
                            "concurrency": c,
                            "model": model.name,
                            "target": target.name,
                            **cell.as_dict(),
                            "others_cpu": others_cpu,
                        }
                    )
                    log(
                        f"  round {number + 1} {target.name:12s} {model.name:10s} c={c:<3d} "
                        f"{cell.throughput:9.0f} inf/s  "
                        f"p99 {_ms(cell.p99_ms)}  errors {cell.errors}  other targets' CPU "
                        + ", ".join(f"{name} {share:.1%}" for name, share in others_cpu.items())
                    )
    return rows


def _measure_alone(
    spec: LoadSpec, concurrency: int, args: argparse.Namespace, others: list[targets.Target]
) -> tuple[CellResult, dict[str, float]]:
    """One cell of the rounds (the ``others`` paused with ``--pause-others``) and the CPU each of
    them used meanwhile, as a share of one core over the cell's warm-up and window (read from
    /proc/PID/stat of every process in its group, Triton's Python-backend stubs included)."""
    before = {t.name: common.group_cpu_seconds(t.server.pid) for t in others}
    started = time.monotonic()
    with common.paused([t.server for t in others] if args.pause_others else []):
        cell = _measure(spec, concurrency, args)
    elapsed = max(time.monotonic() - started, 1e-9)
    return cell, {t.name: (common.group_cpu_seconds(t.server.pid) - before[t.name]) / elapsed for t in others}


def _measure(spec: LoadSpec, concurrency: int, args: argparse.Namespace) -> CellResult:
    """One closed-loop cell with the run's warm-up, window, client processes and client."""
    return run_closed_loop(spec, concurrency, args.warmup, args.window, args.client_procs, args.client)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _ms(value: float | None) -> str:
    return "      —" if value is None else f"{value:7.2f} ms"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    atexit.register(common.stop_all)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    results: dict[str, Any] = {"meta": _meta(args, argv), "inprocess": {}, "targets": {}, "cells": [], "errors": []}
    failed = False
    try:
        log(
            f"benchmark: models {args.models}, targets {args.targets}, c={args.concurrency}, "
            f"warm-up {args.warmup} s, window {args.window} s; work dir {workdir}"
        )
        models = [common.load_model_spec(name) for name in args.models]
        for model in models:
            results["inprocess"][model.name] = inproc = measure_inprocess(model, 0.5 if args.quick else 1.0)
            log(
                f"  in-process {model.name:10s} batch 1: {inproc['batch1']:8.0f} inf/s; best batch "
                f"{inproc['best_batch']}: {inproc['best']:8.0f} inf/s"
            )
        for name in args.targets:
            try:
                target = build_target(name, models, workdir, args)
            except targets.TargetUnavailable as exc:
                results["targets"][name] = {"status": "unavailable", "description": name, "message": str(exc)}
                log(f"[{name}] not run: {exc}")
                failed = True
                continue
            results["targets"][name] = {"status": "running", "description": target.description, "message": ""}
            try:
                run_target(target, models, args, results)
                results["targets"][name]["status"] = "ok"
            except Exception as exc:
                failed = True
                results["targets"][name].update(status="failed", message=str(exc))
                results["errors"].append(f"{name}: {_first_line(exc)}")
                log(f"[{name}] FAILED: {exc}")
                if not isinstance(exc, RuntimeError):
                    traceback.print_exc()
        ran = [name for name in args.targets if results["targets"].get(name, {}).get("status") == "ok"]
        if args.rounds and "shipyard" in ran and len(ran) > 1:
            try:
                results["rounds"] = run_rounds(ran, models, workdir / "rounds", args)
            except Exception as exc:
                failed = True
                results["errors"].append(f"rounds: {_first_line(exc)}")
                log(f"[rounds] FAILED: {exc}")
    finally:
        common.stop_all()
        results["meta"]["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        paths = report.write_reports(results, args.out)
        _keep_logs(workdir, args.out / "logs")
        if not args.no_readme and args.out.resolve() == DEFAULT_OUT.resolve():
            markdown = paths["md"].read_text()
            report.update_readme(DEFAULT_OUT.parent / "README.md", markdown)
            report.update_readme(DEFAULT_OUT.parent.parent / "README.md", report.summary_markdown(markdown))
        shutil.rmtree(workdir, ignore_errors=True)
        log("")
        log(paths["md"].read_text())
        log(f"wrote {paths['json']}, {paths['md']}, {paths['png']}; server logs in {args.out / 'logs'}")
    return 1 if failed else 0


def _keep_logs(workdir: Path, dest: Path) -> None:
    source = workdir / "logs"
    if source.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for log_file in source.iterdir():
            shutil.copyfile(log_file, dest / log_file.name)


if __name__ == "__main__":
    sys.exit(main())
