"""PyTorch backend (``pytorch_libtorch``): TorchScript files (``model.pt``) on CPU or CUDA.

torch is imported only when a model of this platform is inspected or loaded, so the runtime
runs without torch for every other platform.

Inputs are passed to ``forward`` by position, as Triton's pytorch backend does: when every
input name ends in ``__<index>`` (``INPUT__0``, ``INPUT__1``) that index is the position;
otherwise, when the names match ``forward``'s argument names, those positions; otherwise the
order of the inputs in the config. Outputs map the same way (``OUTPUT__0``...; else config
order) onto the tensor, tuple or list that ``forward`` returns; a dict is matched by name.

Model ``parameters`` (Triton's keys): ``INFERENCE_MODE`` (default true),
``DISABLE_OPTIMIZED_EXECUTION`` (default false), ``INTRA_OP_THREAD_COUNT`` and
``INTER_OP_THREAD_COUNT`` (process-wide in torch, as in Triton).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.base import InstanceSettings, ModelSignature, TensorSpec
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError

_INDEXED = re.compile(r"^.+__(\d+)$")
_THREADS_LOCK = Lock()


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError(
            f"the pytorch backend needs torch, which is not installed ({exc}); pip install torch"
        ) from None
    return torch


def _jit_load(torch: Any, path: Path, map_location: Any) -> Any:
    """``torch.jit.load`` without its deprecation warning (TorchScript is Triton's format)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=map_location)


def _flag(parameters: Mapping[str, str], key: str, default: bool) -> bool:
    raw = parameters.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    value = str(raw).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ModelConfigError(f"parameter {key!r} must be true or false, got {raw!r}")


def _positions(names: Sequence[str], forward_args: Sequence[str]) -> list[int]:
    """Position of each name in the call/return order (see the module docstring)."""
    matches = [_INDEXED.match(name) for name in names]
    if names and all(matches):
        indices = [int(m.group(1)) for m in matches if m]
        if sorted(indices) == list(range(len(names))):
            return indices
    if names and all(name in forward_args for name in names):
        return [list(forward_args).index(name) for name in names]
    return list(range(len(names)))


class TorchScriptInstance:
    """One TorchScript module on one device."""

    def __init__(self, torch: Any, module: Any, device: Any, settings: InstanceSettings, forward_args: list[str]):
        self._torch = torch
        self._module = module
        self._device = device
        self._inference_mode = _flag(settings.parameters, "INFERENCE_MODE", True)
        self._optimized = not _flag(settings.parameters, "DISABLE_OPTIMIZED_EXECUTION", False)
        input_names = [spec.name for spec in settings.inputs]
        positions = _positions(input_names, forward_args)
        self._input_order = [name for _, name in sorted(zip(positions, input_names, strict=True))]
        output_names = [spec.name for spec in settings.outputs]
        self._output_positions = dict(zip(output_names, _positions(output_names, ()), strict=True))

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [name for name in self._input_order if name not in inputs]
        if missing:
            raise ValueError(f"missing inputs {missing}; the model takes {self._input_order}")
        for name, array in inputs.items():
            if array.dtype == np.object_:
                raise ValueError(f"input {name!r}: the pytorch backend does not take BYTES tensors")
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self._device) for name in self._input_order]
        guard = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with guard, torch.jit.optimized_execution(self._optimized):
            result = self._module(*args)
        wanted = list(outputs) if outputs else list(self._output_positions)
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            if isinstance(result, dict):
                if name not in result:
                    raise ValueError(f"model returned keys {sorted(result)}, no output {name!r}")
                tensor = result[name]
            else:
                seq = list(result) if isinstance(result, (tuple, list)) else [result]
                position = self._output_positions.get(name)
                if position is None or position >= len(seq):
                    raise ValueError(
                        f"output {name!r} is not produced: the model returned {len(seq)} tensor(s), "
                        f"config outputs are {list(self._output_positions)}"
                    )
                tensor = seq[position]
            out[name] = tensor.detach().cpu().numpy()
        return out

    def close(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


class PyTorchBackend:
    """TorchScript modules saved with ``torch.jit.save``."""

    name = "pytorch"
    platform = "pytorch_libtorch"
    default_filename = "model.pt"
    supports_cpu = True
    supports_gpu = True

    def gpu_usable(self) -> bool:
        """True when torch is a CUDA build that sees a GPU (KIND_AUTO picks GPU)."""
        return bool(_import_torch().cuda.is_available())

    def inspect(self, model_path: Path) -> ModelSignature:
        """TorchScript files do not declare tensor types or shapes: returns an empty signature
        (the config must list inputs and outputs), after checking the file loads.

        Raises: ModelLoadError naming the file when it is missing or not TorchScript.
        """
        torch = _import_torch()
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path}: model file not found")
        try:
            _jit_load(torch, model_path, "cpu")
        except Exception as exc:
            raise ModelLoadError(f"{model_path}: not a TorchScript file (save with torch.jit.save): {exc}") from None
        return ModelSignature((), ())

    def load(self, model_path: Path, settings: InstanceSettings) -> TorchScriptInstance:
        """Load the module onto ``settings.device``.

        Raises: ModelLoadError (bad file, no CUDA for a GPU instance), ModelConfigError (a bad
        parameter value).
        """
        torch = _import_torch()
        if settings.device.kind == "gpu":
            if not torch.cuda.is_available():
                raise ModelLoadError(
                    f"{model_path}: a GPU instance needs torch with CUDA, but torch {torch.__version__} sees no "
                    "CUDA device; install a CUDA build of torch or use KIND_CPU"
                )
            device = torch.device("cuda", settings.device.index)
        else:
            device = torch.device("cpu")
        params = settings.parameters
        with _THREADS_LOCK:
            for key, setter in (
                ("INTRA_OP_THREAD_COUNT", torch.set_num_threads),
                ("INTER_OP_THREAD_COUNT", torch.set_num_interop_threads),
            ):
                raw = params.get(key)
                if raw is None or str(raw).strip() == "":
                    continue
                try:
                    count = int(str(raw))
                except ValueError:
                    raise ModelConfigError(f"{model_path}: parameter {key!r} must be an integer, got {raw!r}") from None
                if count > 0:
                    try:
                        setter(count)
                    except RuntimeError:
                        pass  # interop threads can be set only once per process
        try:
            module = _jit_load(torch, model_path, device)
        except Exception as exc:
            raise ModelLoadError(f"{model_path}: cannot load TorchScript model: {exc}") from None
        module.eval()
        forward_args: list[str] = []
        try:
            forward_args = [arg.name for arg in module.forward.schema.arguments[1:]]
        except Exception:
            pass
        return TorchScriptInstance(torch, module, device, settings, forward_args)


def signature_from_specs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> ModelSignature:
    """A signature built from config tensors (TorchScript files carry none)."""
    return ModelSignature(tuple(inputs), tuple(outputs))
