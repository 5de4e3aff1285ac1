"""Small helpers shared by tests in several folders (a plain module: ``from helpers import free_port``).

``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there (pytest's default prepend import
mode). Keep this module free of kserve and tritonclient.grpc imports: both pytest sessions load it.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def served_in_process(repo: Path, name: str, feeds: dict[str, Any]) -> dict[str, Any]:
    """``name``'s outputs for ``feeds`` (one batch), served by the runtime's model manager in this process."""
    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.scheduling.api import InferenceRequest

    manager = ModelManager([repo], control_mode="none", gpu_count=0)
    await manager.start()
    try:
        batch = next(iter(feeds.values())).shape[0]
        return dict(await manager.get(name).infer(InferenceRequest(inputs=feeds, batch_size=batch)))
    finally:
        await manager.shutdown()


TEST_KERNEL_NAME = "shipyard-test-python"


def write_test_kernelspec(root: Path) -> Path:
    """A Jupyter kernelspec named TEST_KERNEL_NAME that runs sys.executable (this venv's python) under
    ``root``; returns ``root``, the JUPYTER_PATH that finds it."""
    spec_dir = root / "kernels" / TEST_KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "shipyard test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


def stop_local_runtimes(*state_dirs: Path) -> None:
    """Stop every local deployment recorded under ``state_dirs`` (what a test's commands started and a
    failure midway left running)."""
    from shipyard.components.deploy.local import LocalTarget

    for state_dir in state_dirs:
        target = LocalTarget(state_dir)
        for name in target.names():
            target.stop(name)
