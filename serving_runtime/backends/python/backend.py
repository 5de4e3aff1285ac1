"""The ``python`` backend: ``<version>/model.py`` defining ``TritonPythonModel``, as in Triton.

Each instance runs in its own process (``instance.PythonInstance``). ``auto_complete`` runs the
model's static ``auto_complete_config`` (in a short-lived process) before the config is
completed, when the model defines one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.serving_runtime.backends.base import InstanceSettings, ModelSignature
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

# Triton features of the Python backend this runtime refuses at load, with the reason.
_UNSUPPORTED_PARAMETERS = {
    "EXECUTION_ENV_PATH": "custom execution environments (conda-pack) are not supported; install the model's "
    "packages into the server's Python environment",
}


def instance_name(config: ModelConfig, index: int) -> str:
    """Triton's ``model_instance_name`` of the ``index``-th instance: ``<group name>_<n>``."""
    position = 0
    for group in config.instance_group:
        per_device = max(int(group.count), 1)
        total = per_device * max(len(group.gpus), 1) if group.kind == group.KIND_GPU else per_device
        if index < position + total:
            return f"{group.name}_{index - position}"
        position += total
    return f"{config.name}_{index}"


class PythonBackend:
    name = "python"
    platform = ""
    default_filename = "model.py"
    supports_gpu = False

    def inspect(self, model_path: Path) -> ModelSignature:
        """A ``model.py`` declares nothing by itself: the config (or auto_complete_config) lists tensors."""
        return ModelSignature(inputs=(), outputs=())

    def auto_complete(self, config: ModelConfig, model_path: Path, name: str, source: str) -> ModelConfig:
        """``config`` after the model's ``auto_complete_config`` (unchanged when it defines none).

        Raises: ModelConfigError naming the file and the model's error.
        """
        from shipyard.serving_runtime.backends.python.process import CallTimeout, StubDied, StubProcess
        from shipyard.serving_runtime.backends.python.shm import SlabReader
        from shipyard.serving_runtime.config import config_from_json, config_to_dict

        if not config.default_model_filename:  # Triton's completed config names the file
            completed = type(config)()
            completed.CopyFrom(config)
            completed.default_model_filename = self.default_filename
            config = completed
        try:
            text = model_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return config
        if "auto_complete_config" not in text:
            return config
        data = config_to_dict(config)
        data["name"] = name
        stub = StubProcess(f"shipyard-py-auto-{name}", SlabReader(), lambda m: None, lambda s: None)
        try:
            reply = stub.call(("autocomplete", str(model_path), json.dumps(data)), 120.0)
        except (StubDied, CallTimeout) as exc:
            raise ModelConfigError(f"{model_path}: auto_complete_config failed: {exc}") from None
        finally:
            stub.stop(5.0)
        if reply[0] != "ok":
            raise ModelConfigError(f"{model_path}: auto_complete_config failed: {reply[1]}")
        return config_from_json(reply[1], source=f"{source} (after auto_complete_config)")

    def load(self, model_path: Path, settings: InstanceSettings) -> Any:
        """Start one instance's process and run ``initialize``.

        Raises: ModelLoadError (initialize failed, the process died, unsupported parameters).
        """
        from shipyard.serving_runtime.backends.python.instance import PythonInstance
        from shipyard.serving_runtime.config import config_to_dict

        config = settings.config
        if config is None:
            raise ModelLoadError(f"{model_path}: the Python backend needs the model config")
        for key, why in _UNSUPPORTED_PARAMETERS.items():
            if key in settings.parameters:
                raise ModelLoadError(f"{model_path}: parameter {key}: {why}")
        device = settings.device
        args = {
            "model_config": json.dumps(config_to_dict(config)),
            "model_instance_kind": "GPU" if device.kind == "gpu" else "CPU",
            "model_instance_name": instance_name(config, settings.instance_index),
            "model_instance_device_id": str(device.index),
            "model_repository": str(model_path.parent.parent),
            "model_version": str(settings.version),
            "model_name": config.name,
        }
        outputs = [spec.name for spec in settings.outputs]
        return PythonInstance(model_path, args, settings.parameters, outputs)
