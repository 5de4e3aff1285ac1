"""Smoke tests of the benchmark harness: the load generator against real loopback servers, reports.

These are not performance tests: they check that requests flow, that results are counted, and that the
report files are written. The shipyard config the benchmark serves is parsed with the runtime's schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from benchmarks import common, loadgen, native_client, report, targets


@pytest.fixture(scope="module")
def add_sub() -> common.ModelSpec:
    return common.load_model_spec("add_sub")


@pytest.fixture(scope="module")
def echo(add_sub: common.ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[targets.Target]:
    target = targets.echo_target([add_sub], tmp_path_factory.mktemp("echo"))
    with common.running(target.server):
        target.server.wait_ready(target.probe, target.startup_timeout_s)
        yield target
    assert not target.server.alive()


@pytest.mark.slow
def test_closed_loop_grpc_against_echo_counts_requests(echo: targets.Target, add_sub: common.ModelSpec) -> None:
    spec = echo.specs["grpc"](add_sub)
    cell = loadgen.run_closed_loop(spec, concurrency=4, warmup_s=0.3, window_s=1.0, processes=2)
    assert cell.errors == 0, cell.error_samples
    assert cell.completed > 50
    assert cell.throughput == pytest.approx(cell.completed / 1.0)
    assert cell.p50_ms is not None and cell.p99_ms is not None and 0 < cell.p50_ms <= cell.p99_ms
    # the two client processes' own CPU in the 1 s window: some, and at most the machine's
    assert cell.client_cpu_s is not None and 0 < cell.client_cpu_s <= 2.0 * (os.cpu_count() or 1)


@pytest.mark.slow
def test_unknown_model_is_counted_as_errors(echo: targets.Target, add_sub: common.ModelSpec) -> None:
    payload = common.grpc_request_bytes(add_sub, model_name="no_such_model")
    spec = loadgen.LoadSpec("grpc", echo.ports["grpc"], payload)
    cell = loadgen.run_closed_loop(spec, concurrency=1, warmup_s=0.1, window_s=0.5, processes=1)
    assert cell.completed == 0 and cell.errors > 0
    assert "NOT_FOUND" in cell.error_samples[0]


@pytest.mark.slow
def test_open_loop_below_capacity_answers_everything(echo: targets.Target, add_sub: common.ModelSpec) -> None:
    spec = echo.specs["grpc"](add_sub)
    burst = loadgen.run_open_loop(spec, rate=200, duration_s=1.0, max_inflight=64, processes=1, niceness=5)
    assert burst["outcomes"] == {"ok": burst["sent"]}
    assert 150 <= burst["sent"] <= 200
    assert burst["refused_latency"]["p99_ms"] is None  # nothing was refused
    assert burst["ok_latency"]["p99_ms"] is not None


@contextlib.contextmanager
def _infer_server(infer: Callable[[bytes, grpc.ServicerContext], bytes], workers: int) -> Iterator[int]:
    """A sync gRPC server on a loopback port whose ModelInfer is ``infer`` (raw bytes); yields the port."""
    service, method = common.GRPC_INFER_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(infer)})
    server = grpc.server(ThreadPoolExecutor(workers))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{common.LOOPBACK}:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@pytest.mark.slow
def test_open_loop_spreads_each_process_over_its_connections() -> None:
    peers: set[str] = set()

    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        peers.add(context.peer())  # client address and port: one per TCP connection
        return b""

    with _infer_server(infer, workers=4) as port:
        spec = loadgen.LoadSpec("grpc", port, b"", connections=3)
        burst = loadgen.run_open_loop(spec, rate=100, duration_s=0.5, max_inflight=16, processes=1)
    assert burst["warmup_ok"] == 3  # one connection-opening request per connection
    assert burst["outcomes"] == {"ok": burst["sent"]} and burst["sent"] > 20
    assert len(peers) == 3


needs_native_client = pytest.mark.skipif(
    native_client.unavailable_reason() is not None, reason=str(native_client.unavailable_reason())
)


@pytest.mark.slow
@needs_native_client
def test_native_client_counts_requests_and_errors_against_echo(echo: targets.Target, add_sub: common.ModelSpec) -> None:
    spec = echo.specs["grpc"](add_sub)
    cell = loadgen.run_closed_loop(spec, concurrency=4, warmup_s=0.3, window_s=1.0, processes=2, client="native")
    assert cell.errors == 0, cell.error_samples
    assert cell.completed > 50
    assert cell.throughput == pytest.approx(cell.completed / 1.0)
    assert cell.p50_ms is not None and cell.p99_ms is not None and 0 < cell.p50_ms <= cell.p99_ms < 1000
    assert cell.client_cpu_s is not None and 0 < cell.client_cpu_s <= 1.0 * (os.cpu_count() or 1)

    payload = common.grpc_request_bytes(add_sub, model_name="no_such_model")
    bad = loadgen.LoadSpec("grpc", echo.ports["grpc"], payload)
    cell = loadgen.run_closed_loop(bad, concurrency=1, warmup_s=0.1, window_s=0.5, processes=1, client="native")
    assert cell.completed == 0 and cell.errors > 0
    assert cell.error_samples == ["NOT_FOUND: unknown model 'no_such_model'"]


@pytest.mark.slow
@needs_native_client
def test_native_client_keeps_concurrency_in_flight_over_its_connections() -> None:
    peers: set[str] = set()
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        nonlocal in_flight, most
        with lock:
            peers.add(context.peer())  # client address and port: one per TCP connection
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.01)
        with lock:
            in_flight -= 1
        return request[:4]

    with _infer_server(infer, workers=16) as port:
        spec = loadgen.LoadSpec("grpc", port, b"payload", connections=2)
        cell = loadgen.run_closed_loop(spec, concurrency=6, warmup_s=0.2, window_s=0.5, processes=2, client="native")
    assert cell.errors == 0, cell.error_samples
    assert len(peers) == 4  # 2 processes' worth of connections, 2 each
    assert most == 6  # the concurrency, never more
    # 6 calls of ~10 ms at a time for 0.5 s: about 300 complete in the window
    assert 150 <= cell.completed <= 310
    assert cell.p50_ms is not None and cell.p50_ms >= 10


@pytest.mark.slow
@needs_native_client
def test_native_open_loop_offers_its_rate_and_counts_every_outcome(
    echo: targets.Target, add_sub: common.ModelSpec
) -> None:
    spec = replace(echo.specs["grpc"](add_sub), connections=2)
    burst = loadgen.run_open_loop(spec, 400, 1.0, max_inflight=64, processes=2, niceness=5, client="native")
    assert burst["outcomes"] == {"ok": burst["sent"]}
    assert 360 <= burst["sent"] <= 400 and burst["skipped_client_cap"] == 0
    assert burst["warmup_ok"] == 4  # one opening call on each of its 2 x 2 connections
    assert burst["offered_rate"] == pytest.approx(400, rel=0.15)
    assert burst["ok_latency"]["p99_ms"] is not None and burst["refused_latency"]["p99_ms"] is None

    bad = loadgen.LoadSpec("grpc", echo.ports["grpc"], common.grpc_request_bytes(add_sub, model_name="no_such_model"))
    burst = loadgen.run_open_loop(bad, 200, 0.5, max_inflight=64, processes=1, client="native")
    assert burst["outcomes"] == {"NOT_FOUND": burst["sent"]} and burst["sent"] >= 80
    assert burst["error_samples"] == {"NOT_FOUND": "NOT_FOUND: unknown model 'no_such_model'"}
    assert burst["error_latency"]["NOT_FOUND"]["p50_ms"] is not None


def test_unknown_client_is_refused(add_sub: common.ModelSpec) -> None:
    spec = loadgen.LoadSpec("grpc", 1, b"")
    with pytest.raises(ValueError, match="client must be one of native, python"):
        loadgen.run_closed_loop(spec, 1, 0.1, 0.1, client="rust")


def test_load_spec_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="connections"):
        loadgen.LoadSpec("grpc", 1, b"", connections=0)


class _Infer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects
    seen: list[tuple[str, str | None]] = []
    peers: set[int] = set()  # client ports: one per TCP connection

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header_len = int(self.headers["Inference-Header-Content-Length"])
        header = json.loads(body[:header_len])
        _Infer.seen.append((self.path, header["inputs"][0]["name"]))
        _Infer.peers.add(self.client_address[1])
        status = (
            200 if len(body) - header_len == sum(i["parameters"]["binary_data_size"] for i in header["inputs"]) else 400
        )
        reply = b'{"outputs": []}'
        if "no_such_model" in self.path:
            status, reply = 404, b'{"error":"unknown model \'no_such_model\'"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_closed_loop_rest_binary_posts_well_formed_bodies(add_sub: common.ModelSpec) -> None:
    server = ThreadingHTTPServer((common.LOOPBACK, 0), _Infer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        spec = targets.rest_spec(server.server_address[1])(add_sub)
        cell = loadgen.run_closed_loop(spec, concurrency=2, warmup_s=0.2, window_s=0.8, processes=1)
    finally:
        server.shutdown()
        server.server_close()
    assert cell.errors == 0, cell.error_samples
    assert cell.completed > 20
    assert ("/v2/models/add_sub/infer", "INPUT0") in _Infer.seen


@pytest.mark.slow
@pytest.mark.skipif(
    native_client.unavailable_reason("rest") is not None, reason=str(native_client.unavailable_reason("rest"))
)
def test_native_rest_client_posts_well_formed_bodies_over_its_connections(add_sub: common.ModelSpec) -> None:
    _Infer.seen.clear()
    _Infer.peers.clear()
    server = ThreadingHTTPServer((common.LOOPBACK, 0), _Infer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        spec = targets.rest_spec(server.server_address[1])(add_sub)
        cell = loadgen.run_closed_loop(spec, concurrency=3, warmup_s=0.2, window_s=0.8, processes=2, client="native")
        bad = replace(spec, path="/v2/models/no_such_model/infer")
        failing = loadgen.run_closed_loop(bad, concurrency=1, warmup_s=0.1, window_s=0.5, processes=1, client="native")
    finally:
        server.shutdown()
        server.server_close()
    assert cell.errors == 0, cell.error_samples  # the server answers 400 to a body that is not well formed
    assert cell.completed > 20
    assert cell.p50_ms is not None and cell.p50_ms > 0
    assert cell.client_cpu_s is not None and cell.client_cpu_s > 0
    assert ("/v2/models/add_sub/infer", "INPUT0") in _Infer.seen
    assert len(_Infer.peers) == 3 + 1  # one keep-alive connection per concurrent request, and the failing cell's
    assert failing.completed == 0 and failing.errors > 0
    assert failing.error_samples == ['HTTP 404: {"error":"unknown model \'no_such_model\'"}']


def test_shipyard_config_parses_with_the_runtime_schema(add_sub: common.ModelSpec) -> None:
    from shipyard.serving_runtime.config import parse_config_text

    config = parse_config_text(targets.shipyard_config(add_sub, "add_sub_bounded", max_queue_size=32))
    assert config.max_batch_size == targets.SHIPYARD_MAX_BATCH
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 32
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert list(config.input[0].dims) == [16]
    assert config.parameters["intra_op_thread_count"].string_value == "1"


def test_shipyard_published_config_batches_as_the_publish_step_writes(add_sub: common.ModelSpec) -> None:
    """``--shipyard-published``: the priority levels and background parameters of a published config."""
    from shipyard.components.publish.config_builder import TensorInfo, build_config
    from shipyard.serving_runtime.config import parse_config_text

    config = parse_config_text(targets.shipyard_config(add_sub, "add_sub", published=True))
    tensors = [TensorInfo(t.name, t.datatype, (-1, *t.dims)) for t in add_sub.inputs]
    outputs = [TensorInfo(t.name, t.datatype, (-1, *t.dims)) for t in add_sub.outputs]
    published = build_config("add_sub", "onnxruntime_onnx", tensors, outputs, max_batch_size=targets.SHIPYARD_MAX_BATCH)
    assert config.dynamic_batching == published.dynamic_batching
    for key, value in published.parameters.items():
        assert config.parameters[key].string_value == value.string_value, key


def _cell(target: str, protocol: str, model: str, c: int, throughput: float, p50: float, p99: float) -> dict:
    return {
        "target": target,
        "protocol": protocol,
        "model": model,
        "concurrency": c,
        "throughput": throughput,
        "completed": int(throughput),
        "errors": 0,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def test_reports_write_json_markdown_and_png_with_ratios(tmp_path: Path) -> None:
    results = {
        "meta": {"cpus": 2, "command": "python -m benchmarks.run --quick", "note": "smoke numbers"},
        "inprocess": {"wide_mlp": {"batch1": 600.0, "best": 7000.0, "best_batch": 128, "sweep": {}}},
        "targets": {"mlserver": {"status": "unavailable", "description": "MLServer", "message": "run make bench-env"}},
        "cells": [
            _cell("echo", "grpc", "wide_mlp", 64, 7000.0, 5.0, 9.0),
            _cell("kserve", "grpc", "wide_mlp", 1, 500.0, 2.0, 3.0),
            _cell("kserve", "grpc", "wide_mlp", 64, 800.0, 80.0, 120.0),
            _cell("shipyard", "grpc", "wide_mlp", 1, 550.0, 1.8, 2.5),
            {**_cell("shipyard", "grpc", "wide_mlp", 64, 4200.0, 15.0, 30.0), "client_cpu_s": 0.126},
            _cell("shipyard", "rest", "wide_mlp", 64, 3000.0, 20.0, 40.0),
        ],
    }
    paths = report.write_reports(results, tmp_path)
    saved = json.loads(paths["json"].read_text())
    ratios = saved["ratios"]["wide_mlp"]
    assert ratios["shipyard_vs_transport_floor"] == pytest.approx(0.6)
    assert ratios["shipyard_vs_kserve"] == pytest.approx(5.25)
    assert ratios["shipyard_vs_mlserver"] is None
    checks = {c["name"]: c["pass"] for c in saved["checks"]}
    assert checks["wide_mlp: shipyard p99 (gRPC, c=64)"] is True
    assert checks["wide_mlp: shipyard / MLServer adaptive (gRPC, c=64)"] is None
    markdown = paths["md"].read_text()
    assert "| shipyard | grpc | 64 | 4,200 | 15.00 | 30.00 | 0 | 30 |" in markdown  # 0.126 s / 4,200 requests
    assert "| shipyard | rest | 64 | 3,000 | 20.00 | 40.00 | 0 | — |" in markdown  # not measured
    assert "unavailable: run make bench-env" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interleaved_rounds_give_per_round_ratios_and_a_median_check(tmp_path: Path) -> None:
    def row(number: int, model: str, target: str, throughput: float) -> dict:
        return {"round": number, "model": model, "target": target, "throughput": throughput, "completed": 1000}

    results = {
        "meta": {"cpus": 2},
        "targets": {},
        "cells": [_cell("shipyard", "grpc", "add_sub", 64, 5000.0, 10.0, 12.0)],
        "rounds": [
            row(0, "add_sub", "kserve", 4000.0),
            row(0, "add_sub", "shipyard", 6400.0),  # 1.6x
            row(1, "add_sub", "shipyard", 5600.0),  # 1.4x
            row(1, "add_sub", "kserve", 4000.0),
            row(2, "add_sub", "kserve", 5000.0),
            row(2, "add_sub", "shipyard", 7600.0),  # 1.52x
            {**row(3, "add_sub", "kserve", 0.0), "completed": 0},  # failed round: no ratio
            row(3, "add_sub", "shipyard", 9000.0),
        ],
    }
    paths = report.write_reports(results, tmp_path)
    saved = json.loads(paths["json"].read_text())
    entry = saved["round_ratios"]["add_sub: shipyard / stock KServe"]
    assert entry["values"] == pytest.approx([1.6, 1.4, 1.52])
    assert entry["median"] == pytest.approx(1.52)
    checks = {c["name"]: c for c in saved["checks"]}
    median_check = checks["add_sub: shipyard / stock KServe, median of 3 interleaved rounds (gRPC, c=64)"]
    assert median_check["value"] == pytest.approx(1.52) and median_check["pass"] is True
    assert "wide_mlp: shipyard / MLServer" not in saved["round_ratios"]  # never measured
    markdown = paths["md"].read_text()
    assert "| add_sub: shipyard / stock KServe | 1.600 | 1.400 | 1.520 | — | 1.520 |" in markdown
    assert "| add_sub | kserve | 64 | 4,000 | 4,000 | 5,000 | errors ? |" in markdown  # rows without a c: c=64
    summary = report.summary_markdown(markdown)
    assert "## Interleaved rounds" in summary
    assert "| add_sub: shipyard / stock KServe | 1.600 |" in summary  # the ratios stay in the README
    assert "| add_sub | kserve | 64 |" not in summary  # the per-target table only in benchmarks/README.md


def test_issue_21_targets_are_decided_on_the_medians_of_rounds_at_every_concurrency(tmp_path: Path) -> None:
    """A sweep cell that swings (wide_mlp c=16: 0.9x Triton in the sweep) does not decide a target the
    interleaved rounds measured: their median does, at c=1 (p50), c=16 and c=64 (throughput)."""

    def row(number: int, c: int, target: str, throughput: float, p50: float) -> dict:
        return {
            "round": number, "concurrency": c, "model": "wide_mlp", "target": target,
            "throughput": throughput, "p50_ms": p50, "completed": 1000,
        }  # fmt: skip

    results = {
        "meta": {"cpus": 2},
        "targets": {},
        "cells": [
            _cell("shipyard", "grpc", "wide_mlp", 1, 300.0, 3.3, 4.0),
            _cell("triton", "grpc", "wide_mlp", 1, 400.0, 2.5, 3.0),  # sweep p50 ratio 1.32: would fail
            _cell("shipyard", "grpc", "wide_mlp", 16, 1800.0, 8.0, 12.0),
            _cell("triton", "grpc", "wide_mlp", 16, 2000.0, 7.0, 11.0),  # sweep 0.9x: would fail
            _cell("shipyard", "grpc", "wide_mlp", 64, 3000.0, 20.0, 30.0),
            _cell("triton", "grpc", "wide_mlp", 64, 2000.0, 30.0, 40.0),
        ],
        "rounds": [
            row(0, 1, "shipyard", 400.0, 2.4), row(0, 1, "triton", 380.0, 2.6),  # p50 0.923
            row(1, 1, "shipyard", 390.0, 2.5), row(1, 1, "triton", 390.0, 2.5),  # 1.0
            row(2, 1, "triton", 400.0, 2.4), row(2, 1, "shipyard", 350.0, 2.9),  # 1.208
            row(0, 16, "shipyard", 2800.0, 5.0), row(0, 16, "triton", 2000.0, 7.0),  # 1.4
            row(1, 16, "shipyard", 2400.0, 6.0), row(1, 16, "triton", 2000.0, 7.0),  # 1.2
            row(2, 16, "triton", 2000.0, 7.0), row(2, 16, "shipyard", 2700.0, 5.5),  # 1.35
            row(0, 64, "shipyard", 3000.0, 20.0), row(0, 64, "triton", 2000.0, 30.0),  # 1.5
        ],
    }  # fmt: skip
    paths = report.write_reports(results, tmp_path)
    checks = {c["name"]: c for c in json.loads(paths["json"].read_text())["checks"] if c.get("issue") == 21}
    c16 = checks["wide_mlp: shipyard / Triton, median of 3 interleaved rounds (gRPC, c=16)"]
    assert c16["value"] == pytest.approx(1.35) and c16["pass"] is True
    c1 = checks["wide_mlp: c=1 p50 shipyard / Triton, median of 3 interleaved rounds (gRPC)"]
    assert c1["value"] == pytest.approx(1.0) and c1["pass"] is True
    c64 = checks["wide_mlp: shipyard / Triton, median of 1 interleaved round (gRPC, c=64)"]
    assert c64["value"] == pytest.approx(1.5) and c64["pass"] is True
    assert not any(name.startswith("wide_mlp: shipyard / Triton (gRPC") for name in checks)  # no sweep verdicts
    assert "wide_mlp: c=1 p50 shipyard / Triton (gRPC)" not in checks
    markdown = paths["md"].read_text()
    assert "## Interleaved rounds (gRPC, c=1, 16, 64)" in markdown
    assert "| wide_mlp throughput | 16 | 1.400 | 1.200 | 1.350 | 1.350 |" in markdown
    assert "| wide_mlp p50 | 1 | 0.923 | 1.000 | 1.208 | 1.000 |" in markdown


def test_both_overload_scenarios_get_checks_and_sections(tmp_path: Path) -> None:
    def scenario(connections: int, refused_p99: float | None) -> dict[str, object]:
        latency = {"p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0}
        return {
            "status": "ok",
            "model": "wide_mlp_bounded",
            "max_queue_size": 256,
            "capacity": 4000.0,
            "target_rate": 40000.0,
            "duration_s": 3.0,
            "connections": connections,
            "offered_rate": 20000.0,
            "skipped_client_cap": 0,
            "max_inflight": 4096,
            "sent": 100,
            "outcomes": {"ok": 100},
            "accepted": 100,
            "rejected": 0,
            "lost": 0,
            "ok_latency": latency,
            "rejected_latency": latency,
            "rss_before_mb": 100.0,
            "rss_peak_mb": 110.0,
            "rss_after_mb": 101.0,
            "rss_growth_mb": 10.0,
            "recovery_ratio": 1.0,
            "server_cores_burst": 1.25,
            "machine_cores_burst": 2.0,
            "machine_cores": 2,
            "before": {"throughput": 4000.0},
            "after": {"throughput": 4000.0, "errors": 0},
            "probe": {
                "rate": 300.0,
                "outcomes": {"ok": 900},
                "ok_latency": latency,
                "refused_latency": {"p50_ms": refused_p99, "p99_ms": refused_p99, "max_ms": refused_p99},
                "error_latency": {"RESOURCE_EXHAUSTED": latency, "UNAVAILABLE": latency} if refused_p99 else {},
            },
        }

    results = {"meta": {}, "cells": [], "overload": scenario(2, None), "overload_many": scenario(16, 150.0)}
    paths = report.write_reports(results, tmp_path)
    checks = {c["name"]: c["pass"] for c in json.loads(paths["json"].read_text())["checks"]}
    # never refused: not measured (the report shows its answers), not a pass
    assert checks["overload: refusal p99 seen by a light client during the burst"] is None
    assert checks["overload, many connections: refusal p99 seen by a light client during the burst"] is False
    assert checks["overload, many connections: lost accepted requests"] is True
    markdown = paths["md"].read_text()
    assert "## Overload (shipyard, bounded queue)" in markdown
    assert "## Overload (shipyard, bounded queue, many connections)" in markdown
    assert "over 16 gRPC connections" in markdown
    # where the probe's refusals were made, and who had the CPU: what explains the refusal tail
    assert "RESOURCE_EXHAUSTED (grpc++ threads, past --grpc-max-concurrent-rpcs, no Python) p50 1.0 ms" in markdown
    assert "UNAVAILABLE (the model's queue, through the event loop)" in markdown
    assert "CPU during the burst: the server 1.25 cores, the whole machine 2.00 of 2" in markdown


def test_readme_section_is_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    assert report.update_readme(readme, "# title\n\n## table\n| a |\n")
    assert readme.read_text() == f"intro\n{report.README_START}\n### table\n| a |\n{report.README_END}\nafter\n"
    (tmp_path / "other.md").write_text("no markers")
    assert not report.update_readme(tmp_path / "other.md", "x")


async def test_request_path_serves_real_requests_through_the_handler(add_sub: common.ModelSpec) -> None:
    from benchmarks import request_path

    rate, cpu_us = await request_path.measure("add_sub", concurrency=4, seconds=0.2)
    assert rate > 100  # requests went through the handler path and were counted
    assert 0 < cpu_us < 10_000


@pytest.mark.parametrize("own_session", [False, True])
def test_a_lowered_client_gets_a_session_of_its_own_only_when_asked(
    own_session: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_BENCH_CLIENT_SESSION", "1" if own_session else "0")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(10)"], preexec_fn=lambda: common.lower_priority(7)
    )
    try:
        time.sleep(0.3)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        assert (os.getsid(child.pid) == child.pid) is own_session
        group = Path(f"/proc/{child.pid}/autogroup")
        if own_session and group.exists():  # kernels with autogroup: the session's weight is lowered too
            assert group.read_text().split()[-1] == "7"
    finally:
        child.kill()
        child.wait()


def test_paused_stops_a_server_and_its_children_and_the_cpu_read_sees_it(tmp_path: Path) -> None:
    # a "server" that spins, with a spinning child in its process group (as Triton's Python-backend stubs)
    spin = "import os, time\nos.fork()\nwhile True: pass\n"
    server = common.ServerProcess("spin", [sys.executable, "-c", spin], tmp_path / "spin.log")
    with common.running(server):
        deadline = time.monotonic() + 10
        while len(common.group_pids(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(common.group_pids(server.pid)) == 2

        def uses_cpu() -> bool:  # within 5 s, however busy the shared machine is
            before = common.group_cpu_seconds(server.pid)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and common.group_cpu_seconds(server.pid) - before < 0.05:
                time.sleep(0.05)
            return common.group_cpu_seconds(server.pid) - before >= 0.05

        assert uses_cpu()
        with common.paused([server]):
            states = {
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                for pid in common.group_pids(server.pid)
            }
            assert states == {"T"}  # both stopped
            paused_at = common.group_cpu_seconds(server.pid)
            time.sleep(0.5)
            assert common.group_cpu_seconds(server.pid) - paused_at <= 0.01  # one clock tick at most
        assert uses_cpu()  # continued
    deadline = time.monotonic() + 5  # SIGKILLed with the group: the child goes a moment after its parent
    while common.group_pids(server.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert common.group_pids(server.pid) == []


def test_pip_target_against_the_source_tree_per_round_and_within_the_rounds_noise(tmp_path: Path) -> None:
    def row(number: int, model: str, target: str, throughput: float, others: float = 0.0) -> dict:
        return {
            "round": number, "model": model, "target": target, "throughput": throughput, "completed": 1000,
            "others_cpu": {"triton": others},
        }  # fmt: skip

    results = {
        "meta": {"cpus": 2, "rounds_pause_others": False},
        "targets": {},
        "cells": [_cell("shipyard", "grpc", "add_sub", 64, 5000.0, 10.0, 12.0)],
        "rounds": [
            row(0, "add_sub", "shipyard", 10000.0, 0.004),
            row(0, "add_sub", "shipyard-pip", 9800.0),  # 0.98
            row(1, "add_sub", "shipyard", 11000.0),
            row(1, "add_sub", "shipyard-pip", 10500.0),  # 0.955
            row(2, "add_sub", "shipyard", 9000.0),  # the source's own rounds: 10,000 +- 10%
            row(2, "add_sub", "shipyard-pip", 9900.0),  # 1.10
            row(0, "wide_mlp", "shipyard", 3000.0),
            row(0, "wide_mlp", "shipyard-pip", 2000.0),  # 0.667
            row(1, "wide_mlp", "shipyard", 3030.0),
            row(1, "wide_mlp", "shipyard-pip", 2020.0),  # 0.667: a real difference, beyond 1% noise
        ],
    }
    paths = report.write_reports(results, tmp_path)
    saved = json.loads(paths["json"].read_text())
    add_sub = saved["pip_vs_source"]["add_sub"]
    assert add_sub["values"] == pytest.approx([0.98, 10500 / 11000, 1.10])
    assert add_sub["noise"] == pytest.approx(0.1) and add_sub["within_noise"] is True
    assert saved["pip_vs_source"]["wide_mlp"]["within_noise"] is False
    checks = {c["name"]: c for c in saved["checks"]}
    assert checks["add_sub: shipyard-pip / shipyard, median of 3 interleaved rounds (gRPC, c=64)"]["pass"] is True
    assert checks["wide_mlp: shipyard-pip / shipyard, median of 2 interleaved rounds (gRPC, c=64)"]["pass"] is False
    markdown = paths["md"].read_text()
    assert "| add_sub | 0.980 | 0.955 | 1.100 | 0.980 | ±0.100 | yes |" in markdown
    assert "| wide_mlp | 0.667 | 0.667 | — | 0.667 | ±0.005 | no |" in markdown
    assert "left running" in markdown and "at most 0.4% (triton during shipyard's add_sub cell)" in markdown
    assert "were stopped (SIGSTOP" not in markdown
    results["meta"]["rounds_pause_others"] = True
    markdown = report.write_reports(results, tmp_path)["md"].read_text()
    assert "Interleaved rounds: the targets not being measured were stopped (SIGSTOP" in markdown  # the header
    assert "were stopped (SIGSTOP to their process groups) during each cell, continued after" in markdown


def test_shipyard_python_adds_the_pip_target_and_it_needs_an_interpreter() -> None:
    from benchmarks import run

    args = run.parse_args(["--targets", "shipyard", "--client", "python", "--shipyard-python", sys.executable])
    assert args.targets == ["shipyard", "shipyard-pip"]
    with pytest.raises(SystemExit):
        run.parse_args(["--targets", "shipyard,shipyard-pip", "--client", "python"])


def test_threads_prints_the_executions_by_batch_size() -> None:
    from benchmarks import threads

    lines = threads.batch_lines([(1, 80), (3, 10), (40, 10)])  # 80 + 30 + 400 = 510 items in 100 executions
    assert lines[0] == "executions: 100, 5.1 items each on average"
    assert lines[1] == "  batch 1        80% of executions,   16% of items"
    assert lines[-1] == "  batch 17-64    10% of executions,   78% of items"
    assert threads.batch_lines([]) == []


def test_threads_counts_each_threads_cpu_and_wake_ups() -> None:
    from benchmarks import threads

    before = {(1, 1): ("python", 1_000_000_000, 0, 100), (1, 2): ("grpc-writer", 0, 0, 5), (1, 3): ("gone", 0, 0, 1)}
    after = {(1, 1): ("python", 1_500_000_000, 250_000_000, 300), (1, 2): ("grpc-writer", 100_000_000, 0, 2_005),
             (1, 4): ("new", 5, 5, 5)}  # fmt: skip
    rows = threads.per_thread(before, after, 2.0)
    assert [(r["name"], r["cpu"], r["wait"], r["runs_per_s"]) for r in rows] == [
        ("python", 0.25, 0.125, 100.0),
        ("grpc-writer", 0.05, 0.0, 1000.0),
    ]


def test_threads_splits_switches_into_sleeps_and_preemptions() -> None:
    import os

    from benchmarks import threads

    before = {(1, 1): ("python", 0, 0, 10)}
    after = {(1, 1): ("python", 0, 0, 40)}
    rows = threads.per_thread(before, after, 2.0, {(1, 1): (10, 0)}, {(1, 1): (30, 10)})
    assert (rows[0]["sleeps_per_s"], rows[0]["preempted_per_s"]) == (10.0, 5.0)
    assert "sleeps_per_s" not in threads.per_thread(before, after, 2.0)[0]  # no switch counts: left out
    own = threads.switches([os.getpid()])  # this process's threads, read from /proc
    assert (os.getpid(), os.getpid()) in own
    assert all(v >= 0 and n >= 0 for v, n in own.values())
