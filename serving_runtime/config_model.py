"""A config and its model file: completing a missing or partial ``config.pbtxt`` from the file's
signature, as Triton's autocomplete does (``complete_config``, ``normalize_like_triton``), and
checking a config against the file (``check_against_model``). The format itself (parse, render,
validate) is ``config.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.serving_runtime.config import DEFAULT_MAX_BATCH_SIZE, new_config
from shipyard.serving_runtime.config import format_dims as _fmt
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling.sequence_config import hidden_tensors

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from shipyard.serving_runtime.backends.base import ModelSignature, TensorSpec


def _uses_batch_dim(config: ModelConfig, signature: ModelSignature) -> bool:
    """Whether the model batches along its first dimension, as Triton's autocomplete decides."""
    if config.max_batch_size > 0:
        return True
    if not signature.batched:
        return False
    by_name = {t.name: t for t in (*signature.inputs, *signature.outputs)}
    for tensor in (*config.input, *config.output):
        model = by_name.get(tensor.name)
        if model is not None and (len(tensor.dims) or tensor.HasField("reshape")):
            dims = tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims
            # dims listed without the batch dim -> batching; the full rank -> no batching.
            return len(dims) == len(model.dims) - 1
    return True


def complete_config(
    config: ModelConfig,
    *,
    name: str,
    backend_name: str,
    signature: ModelSignature | None,
    gpu_count: int,
    supports_gpu: bool = True,
) -> ModelConfig:
    """A completed copy of ``config``, filled in the way Triton's autocomplete does.

    - ``name``, ``platform`` and ``backend`` set.
    - With a signature (ONNX, TensorRT): when ``max_batch_size`` is unset and every input and
      output has a dynamic first dimension (and the config does not list full-rank dims), the
      model batches: ``max_batch_size`` becomes ``DEFAULT_MAX_BATCH_SIZE`` (4) and, when no
      scheduler is configured, ``dynamic_batching {}`` is added (as Triton does). Inputs and
      outputs missing from the config are added from the file; listed ones missing a datatype
      or dims get them from the file.
    - ``instance_group``: one instance on every GPU when there is one and the backend can use
      it (``supports_gpu``: e.g. onnxruntime has its CUDA provider), else one CPU instance;
      ``KIND_AUTO`` resolved the same way; empty ``gpus`` of a
      KIND_GPU group means every GPU; ``count`` 0 means 1; names filled.

    Does not validate; call ``validate_config`` (and ``check_against_model``) after.
    """
    from shipyard.serving_runtime.backends.registry import platform_of

    completed = new_config()
    completed.CopyFrom(config)
    if not completed.name:
        completed.name = name
    completed.backend = backend_name
    completed.platform = platform_of(backend_name)

    if signature is not None and (signature.inputs or signature.outputs):
        _complete_tensors(completed, signature)
    _complete_instance_groups(completed, gpu_count, supports_gpu and gpu_count > 0)
    if backend_name == "python" and not completed.default_model_filename:
        completed.default_model_filename = "model.py"  # Triton's Python backend reports the file it runs
    normalize_like_triton(completed)
    return completed


def _complete_tensors(completed: ModelConfig, signature: ModelSignature) -> None:
    """Batching, and inputs/outputs (datatype, dims) from the model file's signature."""
    from tritonclient.grpc import model_config_pb2 as pb

    from shipyard.serving_runtime.datatypes import triton_to_config

    batching = _uses_batch_dim(completed, signature)
    if batching and completed.max_batch_size == 0:
        completed.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if completed.WhichOneof("scheduling_choice") is None and DEFAULT_MAX_BATCH_SIZE > 1:
            completed.dynamic_batching.SetInParent()
    skip = 1 if completed.max_batch_size > 0 else 0

    def fill(listed: object, model_specs: Sequence[TensorSpec], add_missing: bool) -> None:
        by_name = {t.name: t for t in listed}  # type: ignore[attr-defined]
        for spec in model_specs:
            tensor = by_name.get(spec.name)
            if tensor is None:
                if not add_missing:
                    continue
                tensor = listed.add()  # type: ignore[attr-defined]
                tensor.name = spec.name
            if tensor.data_type == pb.TYPE_INVALID:
                tensor.data_type = pb.DataType.Value(triton_to_config(spec.datatype))
            if not tensor.dims and not tensor.HasField("reshape"):
                dims = list(spec.dims[skip:])
                if dims:
                    tensor.dims.extend(dims)
                else:  # a [batch] tensor: clients send [batch, 1] (Triton's convention)
                    tensor.dims.append(1)
                    tensor.reshape.SetInParent()

    # Triton adds model tensors only when the config lists none of that kind; a sequence
    # model's control and state tensors are the server's, not the clients'.
    hidden_in, hidden_out = hidden_tensors(completed)
    model_inputs = [spec for spec in signature.inputs if spec.name not in hidden_in]
    model_outputs = [spec for spec in signature.outputs if spec.name not in hidden_out]
    fill(completed.input, model_inputs, add_missing=len(completed.input) == 0)
    fill(completed.output, model_outputs, add_missing=len(completed.output) == 0)


def _complete_instance_groups(completed: ModelConfig, gpu_count: int, use_gpu: bool) -> None:
    """Triton's defaults for ``instance_group``: names, count 1, KIND_AUTO resolved, every GPU."""
    from tritonclient.grpc import model_config_pb2 as pb

    if not completed.instance_group:
        completed.instance_group.add().name = completed.name  # Triton names its default group so
    for index, group in enumerate(completed.instance_group):
        if not group.name:
            group.name = f"{completed.name}_{index}"  # ... and a listed group without a name so
        if group.count == 0:
            group.count = 1
        if group.kind in (pb.ModelInstanceGroup.KIND_AUTO, pb.ModelInstanceGroup.KIND_MODEL):
            group.kind = pb.ModelInstanceGroup.KIND_GPU if use_gpu else pb.ModelInstanceGroup.KIND_CPU
        if group.kind == pb.ModelInstanceGroup.KIND_GPU and not group.gpus and gpu_count > 0:
            group.gpus.extend(range(gpu_count))


def normalize_like_triton(config: ModelConfig) -> None:
    """Defaults Triton's config normalization writes into every served config (so the model-config
    endpoint reports what Triton reports; none changes how shipyard schedules): an empty
    ``preferred_batch_size`` becomes ``[max_batch_size]`` (the same batches), pinned input and
    output memory are on (no effect on CPU), an absent ``version_policy`` is ``latest { 1 }``."""
    if config.HasField("dynamic_batching") and config.max_batch_size > 0:
        if not config.dynamic_batching.preferred_batch_size:
            config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)
    if not config.HasField("optimization"):
        config.optimization.input_pinned_memory.enable = True
        config.optimization.output_pinned_memory.enable = True
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1


def check_against_model(config: ModelConfig, signature: ModelSignature, *, source: str, model_path: Path) -> None:
    """Compare the config's inputs and outputs with what the model file declares.

    Skipped for files that declare nothing (TorchScript). Every model input must be in the
    config; config outputs may be a subset of the model's. Datatypes must match; dims (with the
    batch dim when ``max_batch_size > 0``, or ``reshape.shape``) must match the file's, where a
    dynamic (-1) model dim accepts any config value.

    Raises: ModelConfigError naming the config file, the model file and the tensor.
    """
    from shipyard.serving_runtime.datatypes import config_to_triton

    if not signature.inputs and not signature.outputs:
        return

    def describe(specs: Sequence[TensorSpec]) -> str:
        return ", ".join(f"{s.name} ({s.datatype} {_fmt(s.dims)})" for s in specs) or "none"

    batching = config.max_batch_size > 0
    for kind, tensors, model_specs in (
        ("input", config.input, signature.inputs),
        ("output", config.output, signature.outputs),
    ):
        by_name = {s.name: s for s in model_specs}
        for tensor in tensors:
            spec = by_name.get(tensor.name)
            if spec is None:
                raise ModelConfigError(
                    f"{source}: {kind} {tensor.name!r} is not an {kind} of {model_path}; "
                    f"the model's {kind}s are: {describe(model_specs)}"
                )
            datatype = config_to_triton(int(tensor.data_type))
            if datatype != spec.datatype:
                raise ModelConfigError(
                    f"{source}: {kind} {tensor.name!r} has data_type TYPE_{datatype.replace('BYTES', 'STRING')} "
                    f"but {model_path} declares {spec.datatype}"
                )
            side = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            model_dims = list(spec.dims)
            if batching:
                if not model_dims or model_dims[0] != -1:
                    raise ModelConfigError(
                        f"{source}: max_batch_size {config.max_batch_size} needs a dynamic first dimension, but "
                        f"{kind} {tensor.name!r} of {model_path} has shape {_fmt(model_dims)}; set max_batch_size: 0 "
                        "and list the full dims, or export the model with a dynamic batch axis"
                    )
                model_dims = model_dims[1:]
            compatible = len(side) == len(model_dims) and all(
                m == -1 or c == m for c, m in zip(side, model_dims, strict=True)
            )
            if not compatible:
                what = "reshape" if tensor.HasField("reshape") else "dims"
                shown = _fmt(model_dims) + (" (after the batch dim)" if batching else "")
                raise ModelConfigError(
                    f"{source}: {kind} {tensor.name!r} {what} {_fmt(side)} do not match {model_path}, "
                    f"which declares {shown}"
                )
        if kind == "input":
            listed = {t.name for t in tensors}
            listed |= hidden_tensors(config)[0]  # sequence controls and states: the server feeds them
            missing = [s for s in model_specs if s.name not in listed]
            if missing:
                raise ModelConfigError(
                    f"{source}: model input(s) {describe(missing)} of {model_path} are missing from the config; "
                    "add them to config.pbtxt"
                )
