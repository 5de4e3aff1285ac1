"""``python -m benchmarks.rest_lane_cost`` runs the server's REST stack over a real model, with the
fast lane and without, and reports a CPU cost per request for each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rest_lane_cost_reports_both_paths() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.rest_lane_cost", "--rounds", "5", "--blocks", "1", "--connections", "4",
         "--profile"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r"lane ([\d.]+) µs, ASGI path ([\d.]+) µs per request", done.stdout)
    assert match, done.stdout
    assert float(match.group(1)) > 0 and float(match.group(2)) > 0
    assert "rest_fast_codec.py:parse" in done.stdout  # the lane took the requests (the profile shows its parser)
