"""`make demo` runs the whole flow on the embedded default, serves, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port

from shipyard.components.deploy.local import port_is_free


@pytest.mark.slow
def test_demo_runs_every_stage_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "demo", "--workdir", str(work),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C to stop" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(timeout=600), "".join(lines)[-4000:]
        # while the demo serves, a plain curl gets an answer from the model it promoted
        tensor = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
        body = json.dumps({"inputs": [tensor]})
        answer = subprocess.run(
            ["curl", "-sf", f"http://127.0.0.1:{http_port}/v2/models/digits/infer", "-d", body],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        outputs = json.loads(answer.stdout)["outputs"]
        assert outputs[0]["shape"] == [1, 10]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    for stage in range(1, 7):
        assert f"[{stage}/6]" in out
    assert "models:/digits-cnn@champion -> models:/digits-cnn/1" in out
    served_line = next(line for line in out.splitlines() if line.startswith("served accuracy"))
    assert float(served_line.split()[2]) >= 0.95
    assert "top-1 agreement with torch 1.0000" in out
    assert "stopped the local runtime" in out
    # the repository holds a published version, and MLflow has the alias and lineage tags
    assert (work / "repository" / "digits" / "1" / "model.onnx").is_file()
    db = sqlite3.connect(work / "mlflow" / "mlflow.db")
    aliases = db.execute("select alias, version from registered_model_aliases").fetchall()
    tags = dict(db.execute("select key, value from model_version_tags where version = 1").fetchall())
    assert aliases == [("champion", 1)]
    assert tags["shipyard.validation.passed"] == "true"
    assert any(key.endswith("sha256") for key in tags)
    # Ctrl-C stopped the runtime too: nothing listens on its ports (TIME_WAIT connections aside)
    deadline = time.monotonic() + 10
    while not (port_is_free("127.0.0.1", http_port) and port_is_free("127.0.0.1", grpc_port)):
        assert time.monotonic() < deadline, "the runtime still holds its ports after Ctrl-C"
        time.sleep(0.2)
