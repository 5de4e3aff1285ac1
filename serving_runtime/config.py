"""Triton ``config.pbtxt``: parsed and written with the real protobuf schema.

The schema is tritonclient's ``model_config_pb2`` (``inference.ModelConfig``). This module is
the one definition of the config format: the runtime reads through it and
``components/publish`` writes through it.

Note: tritonclient's gRPC protos and kserve's share the ``inference`` proto package, so a
process must never import both ``tritonclient.grpc`` and ``kserve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format

from shipyard.serving_runtime.errors import ModelConfigError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from shipyard.serving_runtime.backends.base import TensorSpec

CONFIG_FILENAME = "config.pbtxt"


def new_config() -> ModelConfig:
    """An empty ``ModelConfig`` message."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelConfig()


def parse_config_text(text: str, source: str = CONFIG_FILENAME) -> ModelConfig:
    """Parse config text; errors name ``source`` and the line and column.

    Raises: ModelConfigError("<source>:<line>:<col>: <what is wrong>").
    """
    config = new_config()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        detail = str(exc)
        prefix = f"{line}:{column} : "
        if detail.startswith(prefix):
            detail = detail[len(prefix) :]
        raise ModelConfigError(f"{source}:{line}:{column}: {detail}") from None
    return config


def load_config(path: Path) -> ModelConfig:
    """Read and parse a ``config.pbtxt`` file.

    Raises: ModelConfigError naming the file (unreadable, not UTF-8, or a parse error with line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot read model config: {exc}") from None
    return parse_config_text(text, str(path))


def render_config(config: ModelConfig) -> str:
    """The text form Triton writes (``config.pbtxt``)."""
    return str(text_format.MessageToString(config))


# --------------------------------------------------------------------------------------------
# JSON forms (Triton's model-config endpoint, the repository API's load-with-config)
# --------------------------------------------------------------------------------------------

# Triton's --backend-config=default-max-batch-size: the max_batch_size given to a model whose
# config does not set one and whose inputs and outputs all have a dynamic first dimension.
DEFAULT_MAX_BATCH_SIZE = 4


def config_from_json(text: str, source: str = "config JSON") -> ModelConfig:
    """Parse a model config given as JSON (``load_model(name, config=...)``; Triton's field names).

    Raises: ModelConfigError naming ``source`` and what is wrong.
    """
    from google.protobuf import json_format

    config = new_config()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise ModelConfigError(f"{source}: invalid model config JSON: {exc}") from None
    return config


def config_to_dict(config: ModelConfig) -> dict[str, object]:
    """The config as Triton's ``GET /v2/models/{m}/config`` returns it: proto field names, every
    field present, 64-bit integers as JSON numbers (protobuf's JSON writes them as strings)."""
    from google.protobuf import json_format
    from google.protobuf.descriptor import FieldDescriptor

    int64_types = {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }

    def fix(data: dict[str, object], descriptor: object) -> None:
        fields = descriptor.fields_by_name  # type: ignore[attr-defined]
        for key, value in data.items():
            fd = fields.get(key)
            if fd is None:
                continue
            if fd.message_type is not None:
                if fd.message_type.GetOptions().map_entry:
                    value_fd = fd.message_type.fields_by_name["value"]
                    if value_fd.message_type is not None and isinstance(value, dict):
                        for item in value.values():
                            if isinstance(item, dict):
                                fix(item, value_fd.message_type)
                    continue
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, dict):
                        fix(item, fd.message_type)
            elif fd.type in int64_types:
                if isinstance(value, list):
                    data[key] = [int(v) for v in value]
                elif isinstance(value, str):
                    data[key] = int(value)

    result = json_format.MessageToDict(
        config, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    fix(result, config.DESCRIPTOR)
    return result


# --------------------------------------------------------------------------------------------
# Tensors and validation (completion from the model file and checks against it: config_model.py)
# --------------------------------------------------------------------------------------------


def tensor_specs(config: ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as clients see them: Triton datatype names, dims without the batch dim."""
    from shipyard.serving_runtime.backends.base import TensorSpec
    from shipyard.serving_runtime.datatypes import config_to_triton

    def specs(tensors: object) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, config_to_triton(int(t.data_type)), tuple(int(d) for d in t.dims))
            for t in tensors  # type: ignore[attr-defined]
        )

    return specs(config.input), specs(config.output)


def model_side_specs(config: ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as the backend sees them: ``reshape.shape`` where a tensor has one."""
    from shipyard.serving_runtime.backends.base import TensorSpec
    from shipyard.serving_runtime.datatypes import config_to_triton

    def specs(tensors: object) -> tuple[TensorSpec, ...]:
        result = []
        for t in tensors:  # type: ignore[attr-defined]
            dims = t.reshape.shape if t.HasField("reshape") else t.dims
            result.append(TensorSpec(t.name, config_to_triton(int(t.data_type)), tuple(int(d) for d in dims)))
        return tuple(result)

    return specs(config.input), specs(config.output)


def format_dims(dims: Sequence[int]) -> str:
    """``[1,2,3]``, as Triton writes dims in its messages."""
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


def validate_config(config: ModelConfig, *, name: str, source: str) -> None:
    """Checks that need no model file: name, batch size, tensors, instance groups, warm-up.

    ``source`` (the config file path) prefixes every message.

    Raises: ModelConfigError naming ``source`` and what is wrong.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    def fail(message: str) -> None:
        raise ModelConfigError(f"{source}: {message}")

    if config.name and config.name != name:
        fail(f"name {config.name!r} does not match the model directory {name!r}; fix name or rename the directory")
    if config.max_batch_size < 0:
        fail(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            fail(f"no {kind} tensors; list the model's {kind}s in config.pbtxt")
        seen: set[str] = set()
        for tensor in tensors:
            if not tensor.name:
                fail(f"an {kind} has no name")
            if tensor.name in seen:
                fail(f"{kind} {tensor.name!r} is listed twice")
            seen.add(tensor.name)
            if tensor.data_type == pb.TYPE_INVALID:
                fail(f"{kind} {tensor.name!r} has no data_type; set e.g. data_type: TYPE_FP32")
            if not tensor.dims and not (config.max_batch_size > 0):
                fail(f"{kind} {tensor.name!r} has no dims; set dims (e.g. dims: [ 16 ])")
            if any(d == 0 or d < -1 for d in tensor.dims):
                fail(f"{kind} {tensor.name!r} dims {format_dims(tensor.dims)} must be positive or -1 (any size)")
            if tensor.HasField("reshape"):
                shape = list(tensor.reshape.shape)
                if any(d == 0 or d < -1 for d in shape):
                    fail(f"{kind} {tensor.name!r} reshape {format_dims(shape)} must be positive or -1")
                if -1 not in tensor.dims and -1 not in shape:
                    count_dims = _product(tensor.dims)
                    count_shape = _product(shape)
                    if count_dims != count_shape:
                        fail(
                            f"{kind} {tensor.name!r}: dims {format_dims(tensor.dims)} ({count_dims} elements) "
                            f"cannot be reshaped to {format_dims(shape)} ({count_shape} elements)"
                        )
                elif list(tensor.dims).count(-1) != shape.count(-1):
                    fail(f"{kind} {tensor.name!r}: dims and reshape must have the same number of -1 dims")
    for group in config.instance_group:
        if group.count < 0:
            fail(f"instance_group {group.name!r} count must be >= 1, got {group.count}")
        if any(g < 0 for g in group.gpus):
            fail(f"instance_group {group.name!r} gpus {list(group.gpus)} must be GPU indices >= 0")
    input_names = {t.name: t for t in config.input}
    for warmup in config.model_warmup:
        label = f"model_warmup {warmup.name!r}"
        if config.max_batch_size > 0 and not 1 <= warmup.batch_size <= config.max_batch_size:
            fail(f"{label} batch_size {warmup.batch_size} must be between 1 and max_batch_size {config.max_batch_size}")
        for input_name, data in warmup.inputs.items():
            if input_name not in input_names:
                fail(f"{label} input {input_name!r} is not a model input ({', '.join(input_names)})")
            if data.WhichOneof("input_data_type") is None:
                fail(f"{label} input {input_name!r} needs zero_data, random_data or input_data_file")
            if any(d < 1 for d in data.dims):
                fail(f"{label} input {input_name!r} dims {format_dims(data.dims)} must be positive (no -1 in warm-up)")
        missing = [n for n in input_names if n not in warmup.inputs]
        if warmup.inputs and missing:
            fail(f"{label} gives no data for input(s) {', '.join(missing)}")


def _product(dims: Sequence[int]) -> int:
    result = 1
    for d in dims:
        result *= int(d)
    return result


