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
from shipyard.serving_runtime.scheduling.sequence_config import hidden_tensors

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from shipyard.serving_runtime.backends.base import ModelSignature, TensorSpec

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
# Completion and validation
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


def _fmt(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


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
    from shipyard.serving_runtime.datatypes import triton_to_config

    completed = new_config()
    completed.CopyFrom(config)
    from tritonclient.grpc import model_config_pb2 as pb

    if not completed.name:
        completed.name = name
    completed.backend = backend_name
    completed.platform = platform_of(backend_name)

    if signature is not None and (signature.inputs or signature.outputs):
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

    use_gpu = supports_gpu and gpu_count > 0
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
    if backend_name == "python" and not completed.default_model_filename:
        completed.default_model_filename = "model.py"  # Triton's Python backend reports the file it runs
    normalize_like_triton(completed)
    return completed


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
                fail(f"{kind} {tensor.name!r} dims {_fmt(tensor.dims)} must be positive or -1 (any size)")
            if tensor.HasField("reshape"):
                shape = list(tensor.reshape.shape)
                if any(d == 0 or d < -1 for d in shape):
                    fail(f"{kind} {tensor.name!r} reshape {_fmt(shape)} must be positive or -1")
                if -1 not in tensor.dims and -1 not in shape:
                    count_dims = _product(tensor.dims)
                    count_shape = _product(shape)
                    if count_dims != count_shape:
                        fail(
                            f"{kind} {tensor.name!r}: dims {_fmt(tensor.dims)} ({count_dims} elements) cannot be "
                            f"reshaped to {_fmt(shape)} ({count_shape} elements)"
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
                fail(f"{label} input {input_name!r} dims {_fmt(data.dims)} must be positive (no -1 in warm-up)")
        missing = [n for n in input_names if n not in warmup.inputs]
        if warmup.inputs and missing:
            fail(f"{label} gives no data for input(s) {', '.join(missing)}")


def _product(dims: Sequence[int]) -> int:
    result = 1
    for d in dims:
        result *= int(d)
    return result


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
