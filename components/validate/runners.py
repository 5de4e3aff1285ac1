"""Run a model file on a batch of named inputs: ONNX Runtime (``.onnx``) or TensorRT (``.plan``, GPU).

Public: ``Runner`` protocol (input_names, output_names, run(inputs) -> dict, close()), ``load_runner(path,
*, intra_op_threads=0) -> Runner``, ``OnnxRunner``, ``TensorRTRunner``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shipyard.components.errors import ComponentError


class Runner(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OnnxRunner:
    """ONNX Runtime on CPU."""

    def __init__(self, path: str | Path, intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if not Path(path).is_file():
            raise ComponentError(f"model file not found: {path}: check the path")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes for a corrupt or unsupported file
            raise ComponentError(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None
        self.path = Path(path)
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: inputs[name] for name in self.input_names}
        for spec in self._session.get_inputs():
            _check_shape(self.path, spec.name, list(spec.shape), feeds[spec.name].shape)
        return dict(zip(self.output_names, self._session.run(list(self.output_names), feeds), strict=True))

    def close(self) -> None:
        del self._session


def _check_shape(path: Path, name: str, expected: list[Any], got: tuple[int, ...]) -> None:
    """Raise ComponentError when ``got`` cannot feed an input declared as ``expected`` (symbolic dims match any)."""
    fixed = [isinstance(e, int) and e >= 0 for e in expected]
    fits = len(expected) == len(got) and all(not f or e == g for f, e, g in zip(fixed, expected, got, strict=True))
    if not fits:
        pairs = enumerate(zip(fixed, expected, strict=True))
        shown = tuple(e if f else "batch" if i == 0 else "?" for i, (f, e) in pairs)
        raise ComponentError(
            f"input {name!r} has shape {tuple(got)} but {path.name} expects {shown}: give data of that shape"
        )


class TensorRTRunner:
    """A serialized TensorRT engine on GPU 0 (device buffers through torch.cuda)."""

    def __init__(self, path: str | Path) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise ComponentError(f"{path} is a TensorRT engine; running it needs a CUDA GPU and torch with CUDA")
        self._torch = torch
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise ComponentError(f"{path}: TensorRT could not deserialize the engine (built for another TensorRT/GPU?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = tuple(n for n in names if self._engine.get_tensor_mode(n) == mode)
        self.output_names = tuple(n for n in names if self._engine.get_tensor_mode(n) != mode)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self._torch, self._trt
        keep: list[Any] = []
        for name in self.input_names:
            dtype = trt.nptype(self._engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=dtype)).cuda()
            keep.append(tensor)
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs: dict[str, Any] = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = trt.nptype(self._engine.get_tensor_dtype(name))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, device="cuda")
            outputs[name] = tensor
            self._context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise ComponentError("TensorRT execution failed (see the TensorRT log)")
        stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    def close(self) -> None:
        del self._context
        del self._engine


def load_runner(path: str | Path, *, intra_op_threads: int = 0) -> Runner:
    """A runner for ``path`` by suffix: ``.onnx`` -> ONNX Runtime, ``.plan``/``.engine`` -> TensorRT.

    Raises: ComponentError (missing file, unknown suffix, or the runtime cannot load it; the cause is named).
    """
    path = Path(path)
    if not path.is_file():
        raise ComponentError(f"model file not found: {path}")
    try:
        if path.suffix == ".onnx":
            return OnnxRunner(path, intra_op_threads)
        if path.suffix in (".plan", ".engine"):
            return TensorRTRunner(path)
    except ComponentError:
        raise
    except Exception as exc:
        raise ComponentError(f"cannot load {path}: {type(exc).__name__}: {str(exc)[:500]}") from exc
    raise ComponentError(f"{path}: unknown model format {path.suffix!r}; expected .onnx or .plan")
