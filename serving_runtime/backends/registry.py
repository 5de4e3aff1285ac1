"""Which backend serves a model: from the config's ``platform``/``backend``, else from the file.

Backend modules are imported on first use only, so a server that serves ONNX never imports the
torch or TensorRT modules.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from pathlib import Path

from shipyard.serving_runtime.backends.base import Backend
from shipyard.serving_runtime.errors import ModelConfigError

# backend name -> (platform, default file, "module:Class")
_PKG = "shipyard.serving_runtime.backends"
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx", f"{_PKG}.onnxruntime:OnnxRuntimeBackend"),
    "tensorrt": ("tensorrt_plan", "model.plan", f"{_PKG}.tensorrt:TensorRTBackend"),
    "pytorch": ("pytorch_libtorch", "model.pt", f"{_PKG}.pytorch:PyTorchBackend"),
    # Triton's Python backend has no platform and is picked only by ``backend: "python"``.
    "python": ("", "model.py", f"{_PKG}.python.backend:PythonBackend"),
}
_PLATFORMS = {platform: name for name, (platform, _, _) in _BACKENDS.items() if platform}
_EXTENSIONS = {
    ".onnx": "onnxruntime",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".pt2": "pytorch",
}

BACKEND_NAMES: tuple[str, ...] = tuple(_BACKENDS)
PLATFORMS: tuple[str, ...] = tuple(_PLATFORMS)


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend object for a Triton backend name (``onnxruntime``, ``tensorrt``, ``pytorch``).

    Raises: ModelConfigError naming the unknown backend and the supported ones.
    """
    entry = _BACKENDS.get(name)
    if entry is None:
        raise ModelConfigError(f"backend {name!r} is not supported; supported backends: {', '.join(BACKEND_NAMES)}")
    module_name, _, class_name = entry[2].partition(":")
    backend: Backend = getattr(importlib.import_module(module_name), class_name)()
    return backend


def platform_of(backend_name: str) -> str:
    """Triton platform for a backend name (``onnxruntime`` -> ``onnxruntime_onnx``)."""
    return _BACKENDS[backend_name][0]


def default_filename(backend_name: str) -> str:
    """Default model file name of a backend (``model.onnx``...)."""
    return _BACKENDS[backend_name][1]


def backend_for_file(filename: str) -> str | None:
    """Backend name for a model file name by extension, or None when unknown."""
    return _EXTENSIONS.get(Path(filename).suffix.lower())


def resolve_backend_name(
    platform: str, backend: str, default_model_filename: str = "", files: Iterable[str] = (), source: str = ""
) -> str:
    """Pick the backend for a model, as Triton does: ``backend`` wins, then ``platform``, then
    ``default_model_filename``'s extension, then a default file present in the version directory.

    ``files`` are file names found in a version directory; ``source`` prefixes error messages.

    Raises: ModelConfigError when platform/backend are unknown or disagree, or nothing tells.
    """
    prefix = f"{source}: " if source else ""
    if backend and backend not in _BACKENDS:
        raise ModelConfigError(
            f"{prefix}backend {backend!r} is not supported; supported backends: {', '.join(BACKEND_NAMES)}"
        )
    if platform and platform not in _PLATFORMS:
        raise ModelConfigError(
            f"{prefix}platform {platform!r} is not supported; supported platforms: {', '.join(PLATFORMS)}"
        )
    if backend and platform and _PLATFORMS[platform] != backend:
        raise ModelConfigError(
            f"{prefix}platform {platform!r} and backend {backend!r} disagree; "
            f"platform {platform!r} is served by backend {_PLATFORMS[platform]!r}. Set one of them"
        )
    if backend:
        return backend
    if platform:
        return _PLATFORMS[platform]
    if default_model_filename:
        by_file = backend_for_file(default_model_filename)
        if by_file is None:
            raise ModelConfigError(
                f"{prefix}cannot tell the backend from default_model_filename {default_model_filename!r}; "
                f"set platform or backend (one of {', '.join(BACKEND_NAMES)})"
            )
        return by_file
    present = set(files)
    found = [name for name, (platform, filename, _) in _BACKENDS.items() if platform and filename in present]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ModelConfigError(
            f"{prefix}several model files ({', '.join(default_filename(n) for n in found)}) and no platform or "
            "backend in config.pbtxt; set backend to pick one"
        )
    raise ModelConfigError(
        f"{prefix}no model file found (looked for {', '.join(f for p, f, _ in _BACKENDS.values() if p)}) and no "
        "platform or backend in config.pbtxt; add the model file or set backend"
    )
