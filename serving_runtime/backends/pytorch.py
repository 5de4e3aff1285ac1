"""PyTorch backend (``pytorch_libtorch``): TorchScript files (``model.pt``) and ``torch.export``
programs (``model.pt2``, saved with ``torch.export.save``) on CPU or CUDA.

torch is imported only when a model of this platform is inspected or loaded, so the runtime
runs without torch for every other platform.

Inputs are passed to ``forward`` by position, as Triton's pytorch backend does: when every
input name ends in ``__<index>`` (``INPUT__0``, ``INPUT__1``) that index is the position;
otherwise, when the names match ``forward``'s argument names, those positions; otherwise the
order of the inputs in the config. Outputs map the same way (``OUTPUT__0``...; else config
order) onto the tensor, tuple or list that ``forward`` returns; a dict is matched by name.

Model ``parameters`` (Triton's keys): ``INFERENCE_MODE`` (default true),
``DISABLE_OPTIMIZED_EXECUTION`` (default false), ``INTRA_OP_THREAD_COUNT`` and
``INTER_OP_THREAD_COUNT`` (process-wide in torch, as in Triton). shipyard adds
``HALF_PRECISION`` (alias ``half``; default false): the module's weights become float16,
floating-point inputs are cast to float16 on the device, and float16 results are cast back to
the config's output datatype (FP32 unless the config says FP16). Meant for GPUs; on a CPU it
works but is usually slower.

A ``.pt2`` program serves with ``default_model_filename: "model.pt2"`` (and ``backend:
"pytorch"``); its inputs are matched by the names of ``forward``'s arguments, as for TorchScript.
Export it on (or for) the device it will run on: constants captured on another device stay there.

On a GPU instance every instance owns a CUDA stream: inputs are copied, the module runs and the
outputs are copied back on that stream, so instances of one model overlap on the GPU.
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
from shipyard.serving_runtime.datatypes import triton_to_numpy
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


def _load_program(torch: Any, path: Path, device: Any) -> tuple[Any, list[str]]:
    """A ``torch.export`` program as a callable module on ``device``, and its input names."""
    program = torch.export.load(str(path))
    module = program.module().to(device)
    names = [str(name) for name in program.graph_signature.user_inputs]
    return module, names


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
    """One TorchScript module (or ``torch.export`` program) on one device, with its own CUDA
    stream on a GPU."""

    def __init__(
        self,
        torch: Any,
        module: Any,
        device: Any,
        settings: InstanceSettings,
        forward_args: list[str],
        scripted: bool = True,
    ):
        self._torch = torch
        self._module = module
        self._device = device
        self._scripted = scripted
        self._inference_mode = _flag(settings.parameters, "INFERENCE_MODE", True)
        self._optimized = not _flag(settings.parameters, "DISABLE_OPTIMIZED_EXECUTION", False)
        self.half = half_precision(settings.parameters)
        if self.half:
            self._module = module.half()
        self._stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None
        input_names = [spec.name for spec in settings.inputs]
        positions = _positions(input_names, forward_args)
        self._input_order = [name for _, name in sorted(zip(positions, input_names, strict=True))]
        output_names = [spec.name for spec in settings.outputs]
        self._output_positions = dict(zip(output_names, _positions(output_names, ()), strict=True))
        self._output_dtypes: dict[str, np.dtype] = {}
        for spec in settings.outputs:
            try:
                self._output_dtypes[spec.name] = triton_to_numpy(spec.datatype)
            except Exception:
                continue  # BYTES or unknown: leave the result as the module returns it

    @property
    def stream(self) -> Any:
        """This instance's ``torch.cuda.Stream`` (None on CPU)."""
        return self._stream

    def _to_device(self, array: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array))
        if self._stream is not None:
            tensor = tensor.to(self._device, non_blocking=True)
        if self.half and tensor.is_floating_point():
            tensor = tensor.half()
        return tensor

    def _run(self, args: list[Any]) -> Any:
        torch = self._torch
        guard = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with guard:
            if self._scripted:
                with torch.jit.optimized_execution(self._optimized):
                    return self._module(*args)
            return self._module(*args)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [name for name in self._input_order if name not in inputs]
        if missing:
            raise ValueError(f"missing inputs {missing}; the model takes {self._input_order}")
        for name, array in inputs.items():
            if array.dtype == np.object_:
                raise ValueError(f"input {name!r}: the pytorch backend does not take BYTES tensors")
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                args = [self._to_device(inputs[name]) for name in self._input_order]
                result = self._run(args)
                out = self._collect(result, outputs)
            self._stream.synchronize()
            return out
        return self._collect(self._run([self._to_device(inputs[name]) for name in self._input_order]), outputs)

    def _collect(self, result: Any, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
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
            array = tensor.detach().cpu().numpy()
            dtype = self._output_dtypes.get(name)
            if dtype is not None and array.dtype != dtype and array.dtype == np.float16:
                array = array.astype(dtype)
            out[name] = array
        return out

    def close(self) -> None:
        self._module = None
        self._stream = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


def half_precision(parameters: Mapping[str, str]) -> bool:
    """Whether the ``HALF_PRECISION`` (or ``half``) model parameter asks for float16.

    Raises: ModelConfigError when the value is not true/false, or both keys disagree.
    """
    upper = _flag(parameters, "HALF_PRECISION", False)
    lower = _flag(parameters, "half", upper)
    if "HALF_PRECISION" in parameters and "half" in parameters and upper != lower:
        raise ModelConfigError("parameters 'HALF_PRECISION' and 'half' disagree; set only one of them")
    return upper or lower


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
        if _is_program(model_path):
            try:
                torch.export.load(str(model_path))
            except Exception as exc:
                raise ModelLoadError(
                    f"{model_path}: not a torch.export program (save with torch.export.save): {exc}"
                ) from None
            return ModelSignature((), ())
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
        half_precision(params)  # a bad value fails before the (slow) load
        if _is_program(model_path):
            try:
                module, forward_args = _load_program(torch, model_path, device)
            except Exception as exc:
                raise ModelLoadError(f"{model_path}: cannot load torch.export program: {exc}") from None
            return TorchScriptInstance(torch, module, device, settings, forward_args, scripted=False)
        try:
            module = _jit_load(torch, model_path, device)
        except Exception as exc:
            raise ModelLoadError(f"{model_path}: cannot load TorchScript model: {exc}") from None
        module.eval()
        forward_args = []
        try:
            forward_args = [arg.name for arg in module.forward.schema.arguments[1:]]
        except Exception:
            pass
        return TorchScriptInstance(torch, module, device, settings, forward_args)


def _is_program(path: Path) -> bool:
    return path.suffix.lower() == ".pt2"


def signature_from_specs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> ModelSignature:
    """A signature built from config tensors (TorchScript files carry none)."""
    return ModelSignature(tuple(inputs), tuple(outputs))
