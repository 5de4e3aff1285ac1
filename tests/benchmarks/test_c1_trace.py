"""``python -m benchmarks.c1_trace``: a real traced server, the C++ client at c=1, stages printed."""

from __future__ import annotations

import pytest

from benchmarks import c1_trace, native_client


def test_traces_the_stages_of_requests_on_the_fast_path(capsys: pytest.CaptureFixture[str]) -> None:
    from shipyard.serving_runtime.protocol import native_grpc

    for reason in (native_grpc.unavailable_reason(), native_client.unavailable_reason()):
        if reason is not None:
            pytest.skip(reason)
    # the wide MLP: every request takes the instance thread and is answered from it
    assert c1_trace.main(["--model", "wide_mlp", "--rounds", "1", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "round 1: client p50" in out
    traced = int(out.split("requests traced: ")[1].split()[0])
    assert traced > 20
    for stage in ("arrival -> drain", "submit -> kick", "cstart -> cend", "prep0 -> send0"):
        assert stage in out, out
