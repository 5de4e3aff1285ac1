"""Build the ``config.pbtxt`` for a published model, through the runtime's own format code.

Public: ``TensorInfo``, ``onnx_io(path) -> (inputs, outputs)``, ``build_config(name, platform, inputs, outputs, *,
max_batch_size, batching=None, instance_count=1, instance_kind="KIND_CPU", parameters=None) -> ModelConfig``,
``background_rows_for(max_batch_size, measured=None) -> (share, slice, fill)``.
The config is validated with ``shipyard.serving_runtime.config.validate_config`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.components.errors import PublishError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

PLATFORM_BY_SUFFIX = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan", ".pt": "pytorch_libtorch"}
PRIORITY_LEVELS = 2  # generated configs: level 1 real-time (the default), level 2 batch scoring
DEFAULT_PRIORITY_LEVEL = 1
BACKGROUND_SHARE_DIVISOR = 16  # background rows in a real-time batch: max_batch_size / 16
BACKGROUND_SLICE_DIVISOR = 8  # rows of a background slice while real-time work is recent: max_batch_size / 8
BACKGROUND_FILL_DIVISOR = 8  # a real-time batch is topped up with background rows to max_batch_size / 8
FILENAME_BY_PLATFORM = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan", "pytorch_libtorch": "model.pt"}


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: Triton datatype name (``FP32``) and dims including the batch dim (-1)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


def onnx_io(path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs declared by an ONNX file (initializers excluded; symbolic dims are -1).

    Raises: PublishError when the file cannot be read as ONNX.
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from shipyard.serving_runtime.datatypes import numpy_to_triton

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PublishError(f"cannot read {path} as ONNX: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}

    def info(value: Any) -> TensorInfo:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorInfo(value.name, numpy_to_triton(tensor_dtype_to_np_dtype(tensor.elem_type)), dims)

    inputs = [info(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [info(v) for v in model.graph.output]


def build_config(
    name: str,
    platform: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    *,
    max_batch_size: int,
    batching: Mapping[str, Any] | None = None,
    instance_count: int = 1,
    instance_kind: str = "KIND_CPU",
    parameters: Mapping[str, str] | None = None,
    background_instances: int = 0,
    background_lend: bool = True,
) -> ModelConfig:
    """A ``ModelConfig``: tensors (batch dim stripped when batching), instance group, dynamic batching.

    ``batching``: ``preferred_batch_size`` (int or list) and ``max_queue_delay_microseconds``; when None and
    ``max_batch_size > 1``, plain ``dynamic_batching {}``. Batching configs get two priority levels (requests
    without a priority at level 1; ``shipyard score`` sends level 2, a background level: parameters
    ``background_share_rows``, ``background_slice_rows`` and ``background_fill_rows``, from ``batching``'s
    measured ``background_rows`` when it has one, ``background_rows_for``; ``parameters`` may override them).
    ``background_instances`` N > 0 (opt-in, docs/scoring.md "The idle lane"): the last N of the
    ``instance_count`` CPU instances run batch-job work first, computing at the OS's idle priority;
    ``background_lend`` False writes ``background_lend: 0`` (the lane takes no real-time work).
    Raises: PublishError (a tensor's first dim is not the batch dim, the idle lane does not fit the instances,
    or the runtime rejects the config).
    """
    from tritonclient.grpc import model_config_pb2 as pb

    from shipyard.serving_runtime.config import new_config, validate_config
    from shipyard.serving_runtime.datatypes import triton_to_config
    from shipyard.serving_runtime.errors import ModelConfigError
    from shipyard.serving_runtime.scheduling.background import (
        FILL_PARAMETER,
        INSTANCES_PARAMETER,
        LEND_PARAMETER,
        SHARE_PARAMETER,
        SLICE_PARAMETER,
    )

    config = new_config()
    config.name = name
    config.platform = platform
    config.max_batch_size = max_batch_size
    for tensors, field in ((inputs, config.input), (outputs, config.output)):
        for tensor in tensors:
            dims = list(tensor.dims)
            if max_batch_size > 0:
                if not dims or dims[0] not in (-1, 0):
                    raise PublishError(
                        f"tensor {tensor.name!r} has dims {dims}: with max_batch_size={max_batch_size} the first "
                        "dim must be the dynamic batch dim (export with a dynamic batch axis)"
                    )
                dims = dims[1:]
            entry = field.add()
            entry.name = tensor.name
            entry.data_type = pb.DataType.Value(triton_to_config(tensor.datatype))
            entry.dims.extend(dims)
    group = config.instance_group.add()
    group.count = instance_count
    group.kind = pb.ModelInstanceGroup.Kind.Value(instance_kind)
    if max_batch_size > 1:
        config.dynamic_batching.SetInParent()
        # two priority levels: real-time requests (no priority given) at level 1, batch jobs at level 2
        # (``shipyard score`` sends the lowest level), so batch work only fills the gaps
        config.dynamic_batching.priority_levels = PRIORITY_LEVELS
        config.dynamic_batching.default_priority_level = DEFAULT_PRIORITY_LEVEL
        # level 2 is a background level (serving_runtime/scheduling/background.py): it joins a real-time
        # batch with a few rows at most, and while real-time work is recent it runs in slices of a few rows
        # (docs/scoring.md: why no hold-off)
        share, slice_rows, fill = background_rows_for(max_batch_size, (batching or {}).get("background_rows"))
        config.parameters[SHARE_PARAMETER].string_value = str(share)
        config.parameters[SLICE_PARAMETER].string_value = str(slice_rows)
        # and its rows ride along in real-time batches up to the size of a slice (co-batching, docs/scoring.md)
        config.parameters[FILL_PARAMETER].string_value = str(fill)
        if batching:
            preferred = batching.get("preferred_batch_size")
            if preferred:
                values = preferred if isinstance(preferred, (list, tuple)) else [preferred]
                config.dynamic_batching.preferred_batch_size.extend(
                    int(v) for v in values if 0 < int(v) <= max_batch_size
                )
            delay = batching.get("max_queue_delay_microseconds")
            if delay is not None:
                config.dynamic_batching.max_queue_delay_microseconds = int(delay)
    if background_instances:
        _check_lane(background_instances, instance_count, instance_kind, max_batch_size)
        config.parameters[INSTANCES_PARAMETER].string_value = str(background_instances)
        if not background_lend:
            config.parameters[LEND_PARAMETER].string_value = "0"
    elif not background_lend:
        raise PublishError("--no-background-lend needs --background-instances (it keeps the idle lane for batch "
                           "work only): add it or leave this out")  # fmt: skip
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    try:
        validate_config(config, name=name, source=f"config for {name!r}")
    except ModelConfigError as exc:
        raise PublishError(f"the generated config is invalid: {exc}") from exc
    return config


def background_rows_for(max_batch_size: int, measured: Any = None) -> tuple[int, int, int]:
    """(share, slice, fill) rows of the background level for ``max_batch_size``.

    ``measured``: the validation's ``background_rows`` (``recommend_batching``: the largest batch whose call
    costs at most 1.25x a one-row call on the target), which slices and the fill then use, the share at most
    that; 0 or None (not profiled): ``max_batch_size`` / 16, / 8 and / 8.
    """
    share = max(1, max_batch_size // BACKGROUND_SHARE_DIVISOR)
    rows = int(measured or 0)
    if rows > 0:
        rows = min(rows, max_batch_size)
        return min(share, rows), rows, rows
    return share, max(1, max_batch_size // BACKGROUND_SLICE_DIVISOR), max(1, max_batch_size // BACKGROUND_FILL_DIVISOR)


def _check_lane(lane: int, count: int, kind: str, max_batch_size: int) -> None:
    """Raises: PublishError when an idle lane of ``lane`` instances cannot work for this config."""
    if kind != "KIND_CPU":
        raise PublishError(
            f"--background-instances needs CPU instances (the idle lane lowers CPU threads; {kind} gets nothing "
            "from it): leave it out or publish with KIND_CPU"
        )
    if max_batch_size <= 1:
        raise PublishError("--background-instances needs a batching model (max_batch_size > 1): leave it out")
    if lane < 0 or lane >= count:
        raise PublishError(
            f"--background-instances {lane} needs more instances than that (--instance-count is {count}): "
            f"use --instance-count {max(lane, 0) + 1} or more"
        )
