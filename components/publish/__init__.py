"""Publish a model into a Triton-layout model repository (path, ``file://``, ``s3://``, ``gs://``), atomically.

- ``publish(model_file, repository, model_name, *, max_batch_size=None, batching=None, io_model=None,
  inputs=None, outputs=None, instance_count=1, instance_kind=None, keep_versions=3, mlflow_model_uri=None,
  parameters=None) -> PublishResult`` (``version``, ``version_uri``, ``config_text``, ``removed_versions``)
- ``build_config(...) -> ModelConfig`` and ``onnx_io(path)``: the config, through ``shipyard.serving_runtime.config``
- ``publish_files(...)``, ``next_version(repository, model_name)``, ``list_versions(repository, model_name)``
- ``COMPLETE_MARKER``: the last file written into a version on object stores (see ``repository``'s docstring)
"""

from shipyard.components.publish.api import MLFLOW_URI_PARAMETER, publish
from shipyard.components.publish.config_builder import TensorInfo, build_config, onnx_io
from shipyard.components.publish.repository import (
    COMPLETE_MARKER,
    PublishResult,
    list_versions,
    next_version,
    publish_files,
)

__all__ = [
    "COMPLETE_MARKER",
    "MLFLOW_URI_PARAMETER",
    "PublishResult",
    "TensorInfo",
    "build_config",
    "list_versions",
    "next_version",
    "onnx_io",
    "publish",
    "publish_files",
]
