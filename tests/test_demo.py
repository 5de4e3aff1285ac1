"""`make demo` runs the whole flow on the embedded default (here with --no-serve and free ports)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port


@pytest.mark.slow
def test_demo_runs_every_stage_and_serves_the_promoted_model(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    http_port, grpc_port = free_port(), free_port()
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "demo", "--no-serve", "--workdir", str(work),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for stage in range(1, 7):
        assert f"[{stage}/6]" in out
    assert "models:/digits-cnn@champion -> models:/digits-cnn/1" in out
    served_line = next(line for line in out.splitlines() if line.startswith("served accuracy"))
    assert float(served_line.split()[2]) >= 0.95
    assert "top-1 agreement with torch 1.0000" in out
    # the repository holds a published version, and MLflow has the alias and lineage tags
    assert (work / "repository" / "digits" / "1" / "model.onnx").is_file()
    db = sqlite3.connect(work / "mlflow" / "mlflow.db")
    aliases = db.execute("select alias, version from registered_model_aliases").fetchall()
    tags = dict(db.execute("select key, value from model_version_tags where version = 1").fetchall())
    assert aliases == [("champion", 1)]
    assert tags["shipyard.validation.passed"] == "true"
    assert "shipyard.onnx.sha256" in tags or any(k.endswith("sha256") for k in tags)
    # the runtime was stopped at the end: the port is free again
    with socket.socket() as s:
        s.bind(("127.0.0.1", http_port))
