"""Lineage on the model version, as MLflow tags under ``shipyard.``.

Each step writes its tags (re-running a step overwrites its own keys; nothing else is removed):

- register: ``shipyard.source.kind|key|sha256|run_id`` (+ ``shipyard.source.file``)
- export:   ``shipyard.onnx.sha256``, ``shipyard.onnx.opset``, ``shipyard.export.max_batch_size``,
  ``shipyard.export.max_abs_diff``
- optimize: ``shipyard.engine.sha256``, ``shipyard.engine.target`` (``tensorrt`` | ``onnxruntime``),
  ``shipyard.engine.precision``, ``shipyard.engine.runtime`` (TensorRT version and GPU, or ONNX Runtime CPU)
- validate: ``shipyard.validation.passed`` (``true``/``false``), ``shipyard.validation.engine_sha256``,
  ``shipyard.validation.accuracy``, ``shipyard.validation.accuracy_delta``, ``shipyard.validation.summary``,
  ``shipyard.profile.summary``, ``shipyard.batching`` (the recommended dynamic batching, JSON)
- publish:  ``shipyard.published.uri``, ``shipyard.published.version``

Public functions:

- ``record_lineage(model_uri: str, tags: Mapping[str, Any], tracking_uri: str | None = None) -> dict[str, str]``
- ``get_lineage(model_uri: str, tracking_uri: str | None = None) -> dict[str, str]`` (the ``shipyard.*`` tags)
- ``stringify_tags(tags: Mapping[str, Any]) -> dict[str, str]`` (JSON for non-strings)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PREFIX = "shipyard."
SOURCE_KIND = "shipyard.source.kind"
SOURCE_KEY = "shipyard.source.key"
SOURCE_SHA256 = "shipyard.source.sha256"
SOURCE_RUN_ID = "shipyard.source.run_id"
ONNX_SHA256 = "shipyard.onnx.sha256"
ONNX_OPSET = "shipyard.onnx.opset"
EXPORT_MAX_BATCH = "shipyard.export.max_batch_size"
EXPORT_MAX_ABS_DIFF = "shipyard.export.max_abs_diff"
ENGINE_SHA256 = "shipyard.engine.sha256"
ENGINE_TARGET = "shipyard.engine.target"
ENGINE_PRECISION = "shipyard.engine.precision"
ENGINE_RUNTIME = "shipyard.engine.runtime"
VALIDATION_PASSED = "shipyard.validation.passed"
VALIDATION_ENGINE_SHA256 = "shipyard.validation.engine_sha256"
VALIDATION_ACCURACY = "shipyard.validation.accuracy"
VALIDATION_ACCURACY_DELTA = "shipyard.validation.accuracy_delta"
VALIDATION_SUMMARY = "shipyard.validation.summary"
PROFILE_SUMMARY = "shipyard.profile.summary"
BATCHING = "shipyard.batching"
PUBLISHED_URI = "shipyard.published.uri"
PUBLISHED_VERSION = "shipyard.published.version"

_MAX_TAG_CHARS = 5000  # MLflow's limit for a model version tag value


def stringify_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tag values as strings: strings kept, booleans ``true``/``false``, anything else compact JSON."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
        out[str(key)] = text[:_MAX_TAG_CHARS]
    return out


def record_lineage(model_uri: str, tags: Mapping[str, Any], tracking_uri: str | None = None) -> dict[str, str]:
    """Set ``tags`` on the model version ``model_uri`` (aliases resolved); returns what was written.

    Raises: ModelVersionNotFound, RegistryError for a malformed URI.
    """
    from shipyard.registry.resolve import get_version
    from shipyard.registry.store import get_client

    version = get_version(model_uri, tracking_uri)
    client = get_client(tracking_uri)
    written = stringify_tags(tags)
    for key, value in written.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    return written


def get_lineage(model_uri: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The ``shipyard.*`` tags of a model version.

    Raises: ModelVersionNotFound, RegistryError for a malformed URI.
    """
    from shipyard.registry.resolve import get_version

    version = get_version(model_uri, tracking_uri)
    return {k: v for k, v in (version.tags or {}).items() if k.startswith(PREFIX)}
