"""``shipyard score`` against a real serving runtime over gRPC: every input format, the priority
parameter reaching the queue (gRPC and REST), backoff on queue-full answers, CLI errors (exit 2, one line),
and a scorer killed at a random point and restarted (every row once)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from score_harness import Runtime, make_features
from test_score_library import check_predictions, read_output, write_input

from shipyard.components.score import score
from shipyard.components.score.output import MANIFEST, OutputStore

CLI = [sys.executable, "-c", "from shipyard.cli import main; main()"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "npz"])
def test_served_model_scores_every_format(fmt: str, tmp_path: Path, runtime: Runtime) -> None:
    x = make_features(200, seed=1)
    keys = np.arange(200) * 7
    source = write_input(fmt, tmp_path / f"in.{fmt}", x, keys)
    summary = score(str(source), str(tmp_path / "out"), "affine", url=runtime.grpc_url, key="id", part_rows=64,
                    show_progress=False)  # fmt: skip
    assert (summary["rows"], summary["model_version"], summary["priority"], summary["batch_size"]) == (200, 1, 2, 16)
    assert summary["requests"] == 3 * 4 + 1  # 3 parts of 64 rows (4 requests each), then 8 rows
    check_predictions(read_output(str(tmp_path / "out")), x, keys)


def test_priority_parameter_reaches_the_queue(runtime: Runtime) -> None:
    """Model ``prio`` holds a lone request up to 400 ms for a batch; priority level 2 times out after 50 ms."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    x = make_features(1)
    for module, url in ((grpcclient, runtime.grpc_url), (httpclient, runtime.http_url[len("http://") :])):
        client = module.InferenceServerClient(url)
        item = module.InferInput("x", [1, 4], "FP32")
        item.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("prio", [item], priority=2)
        assert "timeout" in str(refused.value).lower() or "time" in str(refused.value).lower()
        started = time.monotonic()
        result = client.infer("prio", [item], priority=1)  # level 1: no timeout, waits out the queue delay
        assert time.monotonic() - started >= 0.3
        np.testing.assert_allclose(result.as_numpy("y"), 2 * x + 1)
        client.close()


def test_batch_job_runs_in_slices_after_real_time_traffic(tmp_path: Path, runtime: Runtime) -> None:
    """Model ``sliced``: after a real-time request, each 32-row batch-job request runs as 8 slices of 4 rows
    (the server's statistics count executions), and the predictions are whole and in order."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(runtime.grpc_url)

    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("sliced", as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))

    item = grpcclient.InferInput("x", [1, 4], "FP32")
    item.set_data_from_numpy(make_features(1))
    client.infer("sliced", [item])  # real-time (the default level): the batch job is sliced from now on
    before = counts()
    x, keys = make_features(64, seed=3), np.arange(64)
    source = write_input("parquet", tmp_path / "in.parquet", x, keys)
    summary = score(str(source), str(tmp_path / "out"), "sliced", url=runtime.grpc_url, key="id", batch_size=32,
                    show_progress=False)  # fmt: skip
    assert (summary["requests"], summary["priority"]) == (2, 2)
    executions, inferences = (now - then for now, then in zip(counts(), before, strict=True))
    assert (executions, inferences) == (16, 64)
    check_predictions(read_output(str(tmp_path / "out")), x, keys)
    client.close()


def test_backs_off_on_queue_full(tmp_path: Path, runtime: Runtime) -> None:
    """Model ``tight`` queues one priority-2 request at most: the others are refused (UNAVAILABLE) and resent."""
    x = make_features(400, seed=2)
    keys = np.arange(400)
    source = write_input("npz", tmp_path / "in.npz", x, keys)
    summary = score(str(source), str(tmp_path / "out"), "tight", url=runtime.grpc_url, key="id", batch_size=4,
                    max_inflight=8, show_progress=False)  # fmt: skip
    assert summary["retries"] > 0 and summary["rows"] == 400
    check_predictions(read_output(str(tmp_path / "out")), x, keys)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "score", *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_errors_exit_2_with_one_line(tmp_path: Path, runtime: Runtime) -> None:
    source = str(write_input("npz", tmp_path / "in.npz", make_features(5), np.arange(5)))
    out = str(tmp_path / "out")
    cases = [
        ([str(tmp_path / "missing.parquet"), "-o", out, "-m", "affine", "--url", runtime.grpc_url], "not found"),
        ([source, "-o", out, "-m", "nope", "--url", runtime.grpc_url], "unknown model 'nope'"),
        (["nosuch://b/x.parquet", "-o", out, "-m", "affine", "--url", runtime.grpc_url], "protocol 'nosuch'"),
        ([source, "-o", "nosuch://b/out", "-m", "affine", "--url", runtime.grpc_url], "protocol 'nosuch'"),
        ([source, "-o", out, "-m", "affine", "--url", "ftp://h:1"], "--url 'ftp://h:1'"),
        ([source, "-o", out, "-m", "affine", "--url", runtime.grpc_url, "--nice", "20"], "--nice must be 0-19"),
    ]
    for args, message in cases:
        result = _cli(*args, "-q")
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stdout == ""


def test_killed_scorer_resumes_without_duplicates_or_losses(tmp_path: Path, runtime: Runtime) -> None:
    rows = 20000
    x = make_features(rows, seed=3)
    keys = np.random.default_rng(3).permutation(rows * 10)[:rows]  # unique, unordered keys
    source = str(write_input("parquet", tmp_path / "in.parquet", x, keys))
    out = tmp_path / "out"
    args = [source, "-o", str(out), "-m", "affine", "--url", runtime.grpc_url, "--key", "id", "--part-rows", "128",
            "--batch-size", "16", "--max-inflight", "2", "-q"]  # fmt: skip
    parts = -(-rows // 128)
    done: set[int] = set()
    for _ in range(2):  # killed twice at a random point (after a random number of parts, mid-part), then resumed
        kill_at = len(done) + random.randint(1, parts // 8)
        process = subprocess.Popen([*CLI, "score", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(OutputStore(str(out)).done_parts()) < kill_at and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.05))
        assert process.poll() is None, "the scorer finished before it could be killed; give it more rows"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        done = OutputStore(str(out)).done_parts()
        assert json.loads((out / MANIFEST).read_text())["status"] == "running"
    assert 0 < len(done) < parts
    final = _cli(*args)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["rows_resumed"] > 0 and summary["rows_resumed"] + summary["rows_scored"] == rows
    assert summary["nice"] == 10, "shipyard score --url did not lower itself (default --nice 10)"
    table = read_output(str(out))
    assert len(set(table.column("id").to_pylist())) == table.num_rows == rows
    check_predictions(table, x, keys)


def test_server_restart_mid_run_is_waited_out(tmp_path: Path, score_repository: Path) -> None:
    """The server dies while the scorer runs and comes back on the same ports: UNAVAILABLE is retried."""
    from score_harness import start_runtime

    rows = 20000
    x = make_features(rows, seed=4)
    keys = np.arange(rows)
    source = str(write_input("npz", tmp_path / "in.npz", x, keys))
    server = start_runtime(score_repository, tmp_path / "server1.log")
    out = tmp_path / "out"
    args = [source, "-o", str(out), "-m", "affine", "--url", server.grpc_url, "--key", "id", "--part-rows", "256",
            "--batch-size", "16", "--max-inflight", "2", "-q"]  # fmt: skip
    scorer = subprocess.Popen([*CLI, "score", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(OutputStore(str(out)).done_parts()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.process.kill()
        server.process.wait(10)
        time.sleep(1.0)
        assert scorer.poll() is None, "the scorer finished or failed while the server was down"
        server = start_runtime(score_repository, tmp_path / "server2.log", ports=(server.http_port, server.grpc_port))
        stdout, stderr = scorer.communicate(timeout=120)
    finally:
        scorer.kill()
        server.process.kill()
        server.process.wait(10)
    assert scorer.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["retries"] > 0 and summary["rows"] == rows
    check_predictions(read_output(str(out)), x, keys)
