"""``python -m benchmarks.c1_trace``: a real traced server, the C++ client at c=1, stages printed."""

from __future__ import annotations

import pytest

from benchmarks import c1_trace, native_client


@pytest.mark.parametrize(
    ("lone_inline", "stages"),
    [
        # the wide MLP, the only call in progress: it computes on the event loop
        ("1", ("arrival -> drain", "submit -> inline", "cstart -> cend", "cend -> resumed")),
        # switched off: it takes the instance thread and is answered from it
        ("0", ("arrival -> drain", "submit -> kick", "cstart -> cend", "prep0 -> send0")),
    ],
    ids=["on-the-loop", "instance-thread"],
)
def test_traces_the_stages_of_requests_on_the_fast_path(
    lone_inline: str, stages: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipyard.serving_runtime.protocol import native_grpc

    for reason in (native_grpc.unavailable_reason(), native_client.unavailable_reason()):
        if reason is not None:
            pytest.skip(reason)
    monkeypatch.setenv("SHIPYARD_FAST_LONE_INLINE", lone_inline)
    assert c1_trace.main(["--model", "wide_mlp", "--rounds", "1", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "round 1: client p50" in out
    traced = int(out.split("requests traced: ")[1].split()[0])
    assert traced > 20
    for stage in stages:
        assert stage in out, out
