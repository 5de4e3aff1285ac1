"""Optimize an ONNX model for serving: TensorRT engine (GPU) or ONNX Runtime (CPU).

- ``optimize(onnx_path, output_dir, *, target="auto", precision="fp32", quantization="dynamic",
  calibration_inputs=None, max_batch_size=None, min_batch_size=1, opt_batch_size=None, workspace_mb=1024,
  timing_cache=None, graph_level="extended", progress=True) -> OptimizeResult``: writes
  ``output_dir/model.onnx`` (onnxruntime) or ``output_dir/model.plan`` (tensorrt); ``result.reason`` says
  which target and why.
- ``select_target(requested, probe=None) -> TargetChoice``; ``probe_machine() -> Probe``
- ``optimize_onnxruntime(...)``, ``build_tensorrt_engine(...)``: the two back ends
- ``load_arrays(path, input_names=()) -> (inputs, labels)``: ``.npz``/``.npy`` calibration or held-out data
"""

from shipyard.components.optimize.api import optimize
from shipyard.components.optimize.calibration import load_arrays
from shipyard.components.optimize.onnxruntime_opt import optimize_onnxruntime
from shipyard.components.optimize.result import OptimizeResult
from shipyard.components.optimize.targets import Probe, TargetChoice, probe_machine, select_target
from shipyard.components.optimize.tensorrt_build import build_tensorrt_engine

__all__ = [
    "OptimizeResult",
    "Probe",
    "TargetChoice",
    "build_tensorrt_engine",
    "load_arrays",
    "optimize",
    "optimize_onnxruntime",
    "probe_machine",
    "select_target",
]
