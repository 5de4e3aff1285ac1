"""``publish``: config through the runtime's format code, then an atomic repository write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shipyard.components.errors import PublishError
from shipyard.components.publish.config_builder import (
    FILENAME_BY_PLATFORM,
    PLATFORM_BY_SUFFIX,
    TensorInfo,
    build_config,
    onnx_io,
)
from shipyard.components.publish.repository import PublishResult, publish_files
from shipyard.registry.digest import sha256_file

MLFLOW_URI_PARAMETER = "mlflow_model_uri"
SHA256_PARAMETER = "shipyard_model_sha256"


def publish(
    model_file: str | Path,
    repository: str | Path,
    model_name: str,
    *,
    max_batch_size: int | None = None,
    batching: Any = None,
    io_model: str | Path | None = None,
    inputs: Sequence[TensorInfo] | None = None,
    outputs: Sequence[TensorInfo] | None = None,
    instance_count: int = 1,
    instance_kind: str | None = None,
    keep_versions: int | None = 3,
    mlflow_model_uri: str | None = None,
    parameters: Mapping[str, str] | None = None,
    serve_versions: Sequence[int] | None = None,
    background_instances: int = 0,
    background_lend: bool = True,
) -> PublishResult:
    """Publish ``model_file`` (``.onnx`` or ``.plan``) as the next version of ``model_name`` in ``repository``.

    ``batching``: a ``BatchingRecommendation`` or a mapping with ``max_batch_size``, ``preferred_batch_size``,
    ``max_queue_delay_microseconds``; its ``max_batch_size`` is used unless ``max_batch_size`` is given.
    Inputs/outputs come from ``inputs``/``outputs``, else from ``io_model`` or the file itself (ONNX); a
    TensorRT plan needs ``io_model`` (its source ONNX) or explicit tensors. ``instance_kind`` defaults to
    KIND_GPU for a plan and KIND_CPU otherwise. ``mlflow_model_uri`` goes into the config ``parameters``
    (key ``mlflow_model_uri``) so the server's metadata points back to the model version. ``serve_versions``: a
    ``version_policy { specific { versions } }`` (a canary keeps the stable version loaded beside the new one).
    ``background_instances``: the idle lane (``build_config``; opt-in); ``background_lend`` False keeps it for
    batch work only.
    Raises: PublishError (unknown format, no tensor information, invalid config, filesystem failure).
    """
    path = Path(model_file)
    if not path.is_file():
        raise PublishError(f"model file not found: {path}")
    platform = PLATFORM_BY_SUFFIX.get(path.suffix)
    if platform is None:
        raise PublishError(f"{path}: unknown model format {path.suffix!r}; publish a .onnx or .plan file")
    if inputs is None or outputs is None:
        source = io_model or (path if path.suffix == ".onnx" else None)
        if source is None:
            raise PublishError(f"{path} is a TensorRT plan: pass io_model=<the ONNX it was built from> (--io-model)")
        found_in, found_out = onnx_io(source)
        inputs = inputs if inputs is not None else found_in
        outputs = outputs if outputs is not None else found_out
    rec: dict[str, Any] = {}
    if batching is not None:
        rec = dict(batching.as_dict()) if hasattr(batching, "as_dict") else dict(batching)
    max_batch = max_batch_size if max_batch_size is not None else int(rec.get("max_batch_size") or 0)
    if max_batch_size is None and not rec:
        max_batch = _max_batch_from_metadata(source_onnx=io_model or (path if path.suffix == ".onnx" else None))
    digest = sha256_file(path)
    params = {SHA256_PARAMETER: digest, **dict(parameters or {})}
    if mlflow_model_uri:
        params[MLFLOW_URI_PARAMETER] = mlflow_model_uri
    kind = instance_kind or ("KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU")
    config = build_config(
        model_name, platform, inputs, outputs, max_batch_size=max_batch, batching=rec or None,
        instance_count=instance_count, instance_kind=kind, parameters=params,
        background_instances=background_instances, background_lend=background_lend,
    )  # fmt: skip
    if serve_versions:
        config.version_policy.specific.versions.extend(sorted(set(serve_versions)))
    from shipyard.serving_runtime.config import render_config

    files = {FILENAME_BY_PLATFORM[platform]: path}
    record_file = path.with_name(path.name + ".json")  # a TensorRT engine's build record (model.plan.json)
    if platform == "tensorrt_plan" and record_file.is_file():
        files[FILENAME_BY_PLATFORM[platform] + ".json"] = record_file
    return publish_files(
        files, repository, model_name, render_config(config),
        keep_versions=keep_versions,
        record={"sha256": digest, "mlflow_model_uri": mlflow_model_uri, "source_file": str(path.resolve())},
    )  # fmt: skip


def _max_batch_from_metadata(source_onnx: str | Path | None) -> int:
    if source_onnx is None:
        return 0
    import onnx

    model = onnx.load(str(source_onnx), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == "shipyard.max_batch_size":
            return int(prop.value)
    return 0
