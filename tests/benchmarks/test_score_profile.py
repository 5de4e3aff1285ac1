"""benchmarks/score_profile.py: a window's per-thread CPU grouped by role and the model's executions by batch rows."""

from __future__ import annotations

from benchmarks import score_profile


def test_the_summary_groups_threads_by_role_and_batches_by_rows() -> None:
    server, scorer = 100, 300
    before = {(100, 100): ("python", 0, 0, 0), (100, 101): ("wide_mlp-v1-i0", 0, 0, 0),
              (100, 102): ("wide_mlp-v1-bg0", 0, 0, 0), (100, 103): ("grpc_global_tim", 0, 0, 0),
              (200, 200): ("native_client", 0, 0, 0), (300, 300): ("python", 0, 0, 0)}  # fmt: skip
    after = {(100, 100): ("python", 100_000_000, 50_000_000, 10), (100, 101): ("wide_mlp-v1-i0", 800_000_000, 0, 5),
             (100, 102): ("wide_mlp-v1-bg0", 500_000_000, 400_000_000, 5),
             (100, 103): ("grpc_global_tim", 10_000_000, 0, 1), (200, 200): ("native_client", 60_000_000, 0, 1),
             (300, 300): ("python", 40_000_000, 0, 1), (100, 104): ("new", 1, 1, 1)}  # fmt: skip
    stats0 = {"batches": {4: (10, 20_000_000), 128: (1, 30_000_000)}, "queue": (100, 100_000_000)}
    stats1 = {"batches": {4: (410, 1_020_000_000), 16: (50, 150_000_000), 128: (11, 330_000_000)},
              "queue": (600, 1_100_000_000)}  # fmt: skip
    out = score_profile.summarize(before, after, 1.0, stats0, stats1, {server}, scorer)
    roles = out["roles"]
    assert set(roles) == {"event-loop", "rt-instance", "lane", "server-other", "rt-client", "scorer"}
    assert round(roles["rt-instance"]["cpu"], 2) == 0.8 and round(roles["lane"]["wait"], 2) == 0.4
    assert round(roles["scorer"]["cpu"], 2) == 0.04 and round(roles["rt-client"]["cpu"], 2) == 0.06
    batches = out["batches"]
    assert batches["1-8"]["executions"] == 400 and round(batches["1-8"]["mean_ms"], 2) == 2.5
    assert batches["9-16"]["rows"] == 800 and batches[">=17"]["executions"] == 10
    assert round(out["queue_mean_ms"], 2) == 2.0
    (line,) = score_profile.lines("round 1: alone", out)
    assert "rt-instance 80% cpu" in line and "1-8 rows: 400/s x 2.50 ms" in line
    assert "not profiled (boom)" in score_profile.lines("x", {"error": "boom"})[0]
