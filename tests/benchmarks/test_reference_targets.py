"""Issue 21's references in ``make bench`` (benchmarks/reference_targets.py, report_native.py):
the real Triton server with the model behind its Python backend, and the C++ grpc++ echo server,
each started as the benchmark starts it and called with tritonclient; then the report's rows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from benchmarks import common, loadgen, reference_targets, report
from benchmarks.targets import Target


@pytest.fixture(scope="module")
def add_sub() -> common.ModelSpec:
    return common.load_model_spec("add_sub")


def _started(target: Target) -> Iterator[Target]:
    with common.running(target.server):
        target.server.wait_ready(target.probe, target.startup_timeout_s)
        yield target
    assert not target.server.alive()


def _inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [grpcclient.InferInput(name, list(a.shape), "FP32") for name in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


@pytest.mark.slow
def test_echo_cpp_answers_the_canned_response_and_refuses_other_models(
    add_sub: common.ModelSpec, tmp_path: Path
) -> None:
    reason = reference_targets.echo_cpp_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    for target in _started(reference_targets.echo_cpp_target([add_sub], tmp_path)):
        a = np.ones((1, 16), np.float32)
        with grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{target.ports['grpc']}") as client:
            assert client.is_server_live() and client.is_server_ready()
            result = client.infer("add_sub", _inputs(a, a))
            assert result.get_response().id == "bench"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.zeros((1, 16), np.float32))  # canned
            with pytest.raises(InferenceServerException, match="unknown model 'other'"):
                client.infer("other", _inputs(a, a))
            with pytest.raises(InferenceServerException, match="does not implement"):
                client.get_server_metadata()
        cell = loadgen.run_closed_loop(target.specs["grpc"](add_sub), 4, 0.2, 0.5, 1, "python")
        assert cell.errors == 0 and cell.completed > 0


@pytest.mark.slow
def test_triton_serves_the_model_through_its_python_backend(add_sub: common.ModelSpec, tmp_path: Path) -> None:
    from benchmarks.servers.triton import TritonUnavailable, find_triton

    try:
        find_triton()
    except TritonUnavailable as exc:
        if os.environ.get("SHIPYARD_REQUIRE_TRITON") == "1":
            pytest.fail(f"the reference Triton server is required here: {exc}")
        pytest.skip(str(exc))
    for target in _started(reference_targets.triton_target([add_sub], tmp_path)):
        repo = tmp_path / "triton-repo" / "add_sub"
        assert 'backend: "python"' in (repo / "config.pbtxt").read_text()
        rng = np.random.default_rng(0)
        a, b = rng.random((1, 16), np.float32), rng.random((1, 16), np.float32)
        with grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{target.ports['grpc']}") as client:
            result = client.infer("add_sub", _inputs(a, b))
            config = client.get_model_config("add_sub", as_json=True)["config"]
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        assert config["backend"] == "python" and config["max_batch_size"] == 128
        assert "dynamic_batching" in config


def _cell(target: str, protocol: str, model: str, c: int, throughput: float, p50: float) -> dict:
    return {"target": target, "protocol": protocol, "model": model, "concurrency": c, "throughput": throughput,
            "completed": int(throughput), "errors": 0, "p50_ms": p50, "p99_ms": 2 * p50}  # fmt: skip


def test_report_prints_shipyard_over_triton_for_every_cell_and_issue_21_checks(tmp_path: Path) -> None:
    cells = [
        _cell("triton", "grpc", "add_sub", 1, 2000.0, 0.40),
        _cell("shipyard", "grpc", "add_sub", 1, 2100.0, 0.38),
        _cell("triton", "grpc", "add_sub", 16, 7000.0, 2.0),
        _cell("shipyard", "grpc", "add_sub", 16, 9800.0, 1.5),
        _cell("triton", "grpc", "add_sub", 64, 10000.0, 6.0),
        _cell("shipyard", "grpc", "add_sub", 64, 12000.0, 5.0),
        _cell("shipyard", "rest", "add_sub", 64, 11000.0, 5.5),
        _cell("triton", "rest", "add_sub", 64, 8000.0, 7.0),
        _cell("echo-cpp", "grpc", "add_sub", 64, 16000.0, 3.0),
        _cell("shipyard", "grpc", "wide_mlp", 64, 3000.0, 20.0),  # no Triton cell: no row, checks not measured
    ]
    results = {"meta": {"cpus": 2}, "targets": {}, "cells": cells}
    paths = report.write_reports(results, tmp_path)
    saved = json.loads(paths["json"].read_text())
    checks = {c["name"]: c for c in saved["checks"] if c.get("issue") == 21}
    assert checks["add_sub: shipyard / Triton (gRPC, c=16)"]["value"] == pytest.approx(1.4)
    assert checks["add_sub: shipyard / Triton (gRPC, c=16)"]["pass"] is True
    assert checks["add_sub: shipyard / Triton (gRPC, c=64)"]["pass"] is False  # 1.2x
    assert checks["add_sub: c=1 p50 shipyard / Triton (gRPC)"]["pass"] is True
    assert checks["add_sub: shipyard / C++ echo floor (gRPC, c=64)"]["value"] == pytest.approx(0.75)
    assert checks["add_sub: shipyard REST binary / gRPC (c=64)"]["value"] == pytest.approx(11 / 12)
    assert checks["wide_mlp: shipyard / Triton (gRPC, c=64)"]["pass"] is None
    markdown = paths["md"].read_text()
    assert "## Issue 21 targets" in markdown
    assert "| add_sub | grpc | 16 | 9,800 | 7,000 | 1.400 | 0.750 |" in markdown
    assert "| add_sub | rest | 64 | 11,000 | 8,000 | 1.375 | 0.786 |" in markdown
    assert "| wide_mlp | grpc | 64 |" not in markdown.split("## shipyard / Triton")[1].split("\n## ")[0]
    summary = report.summary_markdown(markdown)
    assert "## Issue 21 targets" in summary and "## shipyard / Triton (every cell)" in summary
