"""MLServer reference: a small ``MLModel`` that runs the same ONNX session, with adaptive batching.

This module runs inside MLServer's own virtual environment (``.venv-mlserver``, made by
``make bench-env``), so it imports only mlserver, onnxruntime and numpy. MLServer imports the class
by its dotted path from ``model-settings.json``; the benchmark writes those files with
:func:`write_mlserver_config` (which needs nothing from MLServer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:  # only inside MLServer's environment
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # pragma: no cover - the benchmark's own environment has no mlserver
    MLModel = object

IMPLEMENTATION = "benchmarks.servers.mlserver_onnx.OnnxModel"


class OnnxModel(MLModel):  # type: ignore[misc,valid-type]
    """Runs ``parameters.uri`` (an ONNX file) with one intra-op thread; MLServer batches requests for it."""

    async def load(self) -> bool:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = self.settings.parameters.uri  # type: ignore[attr-defined]
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,  # type: ignore[attr-defined]
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results, strict=True)],
        )


def write_mlserver_config(
    folder: Path,
    models: dict[str, Path],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    max_batch_size: int = 128,
    max_batch_time_s: float = 0.005,
    parallel_workers: int = 1,
) -> Path:
    """Write ``settings.json`` and one ``<model>/model-settings.json`` per model under ``folder``.

    Returns the folder to pass to ``mlserver start``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": parallel_workers,
        "load_models_at_startup": True,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in models.items():
        model_dir = folder / name
        model_dir.mkdir(exist_ok=True)
        model_settings = {
            "name": name,
            "implementation": IMPLEMENTATION,
            "max_batch_size": max_batch_size,
            "max_batch_time": max_batch_time_s,
            "parameters": {"uri": str(path)},
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return folder
