"""A server killed outright (SIGKILL, the OOM killer) cannot remove its Python models' shared-memory
slabs; each model process then notices the server's end and removes its instance's slabs, the
server's and its own, so ``/dev/shm`` does not fill up with them across restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ECHO = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""

# The "server": one instance of the model, one request through it (so both sides wrote slabs), then it waits.
SERVER = """
import json, sys, time
from pathlib import Path
import numpy as np
from shipyard.serving_runtime.backends.python.instance import PythonInstance
root = Path(sys.argv[1])
args = {"model_config": json.dumps({"name": "echo", "backend": "python", "max_batch_size": 8}),
        "model_instance_kind": "CPU", "model_instance_name": "echo_0", "model_instance_device_id": "0",
        "model_repository": str(root), "model_version": "1", "model_name": "echo"}
instance = PythonInstance(root / "echo" / "1" / "model.py", args, {}, ["y"])
print(instance.execute({"x": np.ones((1, 4), np.float32)}, ("y",))["y"].sum(), flush=True)
time.sleep(600)
"""


def test_a_killed_servers_slabs_are_removed_by_its_model_processes(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    model = tmp_path / "echo" / "1" / "model.py"
    model.parent.mkdir(parents=True)
    model.write_text(ECHO)
    env = {**os.environ, "SHIPYARD_PYTHON_SHM_DIR": str(shm)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "4.0"
        names = sorted(p.name for p in shm.iterdir())
        assert any("-s-" in name for name in names) and any("-s-" not in name for name in names), names
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(shm.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(p.name for p in shm.iterdir()) == []
    finally:
        server.kill()
        server.wait()
