"""Which ONNX Runtime execution providers (and their options) an instance gets, from the config's
``optimization.execution_accelerators`` and model ``parameters`` in Triton's form: a pure function,
tested without a GPU. ``onnxruntime.py`` documents the keys and creates the sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError

_TRUE = ("1", "true", "yes", "on")
# Triton's tensorrt accelerator keys that are not ORT option names.
_TRT_RENAMED = {"max_workspace_size_bytes": "trt_max_workspace_size"}
_TRT_BOOLEANS = {
    "trt_int8_use_native_calibration_table",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_layer_norm_fp32_fallback",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_dump_ep_context_model",
}
_TRT_INT8_KEYS = {
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}
# Triton's deprecated model parameters for the CUDA EP (parameter key -> (option, value map)).
_CUDA_PARAMETERS: dict[str, tuple[str, dict[str, str] | None]] = {
    "cudnn_conv_algo_search": ("cudnn_conv_algo_search", {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}),
    "gpu_mem_limit": ("gpu_mem_limit", None),
    "arena_extend_strategy": ("arena_extend_strategy", {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}),
    "do_copy_in_default_stream": ("do_copy_in_default_stream", None),
}


def _tensorrt_options(params: Mapping[str, str], device_id: int, source: str) -> dict[str, str]:
    options = {"device_id": str(device_id)}
    for key, value in params.items():
        if key == "precision_mode":
            mode = value.strip().upper()
            if mode not in ("FP32", "FP16", "INT8"):
                raise ModelConfigError(
                    f"{source}: tensorrt accelerator precision_mode must be FP32, FP16 or INT8, got {value!r}"
                )
            if mode in ("FP16", "INT8"):
                options["trt_fp16_enable"] = "True"
            if mode == "INT8":
                options["trt_int8_enable"] = "True"
        elif key in _TRT_RENAMED:
            options[_TRT_RENAMED[key]] = value
        elif key in _TRT_INT8_KEYS:
            options[_TRT_INT8_KEYS[key]] = value
        elif key.startswith("trt_"):
            options[key] = value
        else:
            raise ModelConfigError(
                f"{source}: tensorrt accelerator parameter {key!r} is not known; use precision_mode, "
                "max_workspace_size_bytes, int8_calibration_table_name, int8_use_native_calibration_table "
                "or a trt_* option of ONNX Runtime's TensorRT provider"
            )
    # ORT's TensorRT provider takes booleans as "True"/"False" (Triton accepts "1"/"true" too).
    for key in options:
        if key in _TRT_BOOLEANS or key.endswith("_enable"):
            options[key] = "True" if options[key].strip().lower() in _TRUE else "False"
    return options


def execution_providers(
    optimization: Any,
    parameters: Mapping[str, str],
    device_kind: str,
    device_id: int,
    available: Sequence[str],
    source: str = "config.pbtxt",
) -> list[Any]:
    """The ``providers`` argument of ``InferenceSession`` for one instance, from the config.

    ``optimization`` is ``config.optimization`` (a ModelOptimizationPolicy) or None;
    ``parameters`` the model parameters; ``available`` what ``get_available_providers()`` says.
    Pure: no session is created, so this is tested without a GPU.

    Raises: ModelConfigError for an unknown accelerator name or parameter; ModelLoadError when
    the config needs a provider this onnxruntime does not have (names it and what to install).
    """
    present = set(available)
    accelerators = optimization.execution_accelerators if optimization is not None and optimization.HasField(
        "execution_accelerators") else None  # fmt: skip
    if device_kind != "gpu":
        providers: list[Any] = []
        for accelerator in accelerators.cpu_execution_accelerator if accelerators is not None else ():
            if accelerator.name != "openvino":
                raise ModelConfigError(
                    f"{source}: cpu_execution_accelerator {accelerator.name!r} is not supported by the onnxruntime "
                    "backend; use 'openvino' or remove it"
                )
            if "OpenVINOExecutionProvider" not in present:
                raise ModelLoadError(
                    f"{source}: config asks for the openvino CPU accelerator but this onnxruntime has no "
                    f"OpenVINOExecutionProvider (it has {sorted(present)}); pip install onnxruntime-openvino "
                    "or remove cpu_execution_accelerator"
                )
            providers.append(("OpenVINOExecutionProvider", dict(accelerator.parameters)))
        providers.append("CPUExecutionProvider")
        return providers
    if "CUDAExecutionProvider" not in present:
        raise ModelLoadError(
            f"{source}: a GPU instance needs onnxruntime's CUDAExecutionProvider, but this onnxruntime "
            f"has only {sorted(present)}; install onnxruntime-gpu (shipyard[gpu]) or use KIND_CPU"
        )
    cuda_options: dict[str, str] = {"device_id": str(device_id)}
    for key, (option, values) in _CUDA_PARAMETERS.items():
        raw = parameters.get(key)
        if raw is None or str(raw).strip() == "":
            continue
        value = str(raw).strip()
        if values is not None:
            if value not in values:
                raise ModelConfigError(f"{source}: parameter {key!r} must be one of {sorted(values)}, got {value!r}")
            value = values[value]
        cuda_options[option] = value
    providers = []
    for accelerator in accelerators.gpu_execution_accelerator if accelerators is not None else ():
        params = dict(accelerator.parameters)
        if accelerator.name == "tensorrt":
            if "TensorrtExecutionProvider" not in present:
                raise ModelLoadError(
                    f"{source}: config asks for the tensorrt GPU accelerator but this onnxruntime has no "
                    f"TensorrtExecutionProvider (it has {sorted(present)}); install onnxruntime-gpu with "
                    "TensorRT libraries or remove the accelerator"
                )
            if any(name == "TensorrtExecutionProvider" for name, _ in providers):
                raise ModelConfigError(f"{source}: gpu_execution_accelerator 'tensorrt' is listed twice")
            providers.append(("TensorrtExecutionProvider", _tensorrt_options(params, device_id, source)))
        elif accelerator.name == "cuda":
            cuda_options.update({key: str(value) for key, value in params.items()})
            cuda_options["device_id"] = str(device_id)
        else:
            raise ModelConfigError(
                f"{source}: gpu_execution_accelerator {accelerator.name!r} is not supported by the onnxruntime "
                "backend; use 'tensorrt' or 'cuda'"
            )
    providers.append(("CUDAExecutionProvider", cuda_options))
    providers.append("CPUExecutionProvider")
    return providers
