"""Short versions of ``make fuzz`` and ``make soak`` (benchmarks/fuzz.py, benchmarks/soak.py) on a real server.

Fuzz: schemathesis requests generated from the server's own ``/v2/openapi.json`` (plus byte-level
variants of each), malformed messages on every gRPC method and boofuzz cases on raw HTTP connections:
no 5xx (503 aside), no INTERNAL or UNKNOWN, no traceback, the server alive, RSS within 20 MB. Soak:
load -> infer -> unload cycles while another model serves, then idle, idle-gRPC and slowloris
connections while good requests are timed.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

pytest.importorskip("schemathesis", reason="schemathesis (the dev extra) fuzzes the REST API")

from benchmarks import fuzz, soak


def test_short_fuzz_finds_no_server_error() -> None:
    report = fuzz.run(http_requests=400, grpc_messages=300, boofuzz_cases=150)
    print("\n".join(report.lines()))
    assert report.failures == []
    assert report.http_requests >= 400 and report.grpc_messages == 300
    assert report.boofuzz is not None and report.boofuzz.cases >= 150
    assert {200, 400} <= set(report.boofuzz.status)  # boofuzz's cases reached the codecs, its unmutated ones passed
    assert report.alive
    assert report.rss_growth_mb < 20
    assert 400 in report.http_status and "INVALID_ARGUMENT" in report.grpc_status  # it reached the codecs


def test_openapi_document_is_served_and_names_every_infer_route(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.edges import runtime

    with runtime(tmp_path) as served:
        with urllib.request.urlopen(served.http_url + "/v2/openapi.json", timeout=10) as resp:
            document = json.loads(resp.read())
    assert document["openapi"].startswith("3.")
    assert "/v2/models/{model}/infer" in document["paths"]
    assert "/v2/models/{model}/versions/{version}/infer" in document["paths"]


def test_short_soak_keeps_memory_flat_and_serves_through_idle_and_slow_connections() -> None:
    report = soak.run(n_cycles=30, idle_http=150, idle_grpc=50, slowloris=30)
    print("\n".join(report.lines()))
    assert report.cycle_failures == [] and report.steady_failures == 0
    assert report.steady_requests > 0
    assert report.rss_end_mb - report.rss_start_mb < 20
    assert sorted(report.rest_ms)[len(report.rest_ms) // 2] < 100
    assert sorted(report.grpc_ms)[len(report.grpc_ms) // 2] < 100
