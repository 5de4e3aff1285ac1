"""Fixtures for the deploy tests: validation against KServe's full CRD schemas.

The schemas are test data kept outside the project (``../shared/kserve-crds`` next to the
repository, or ``$SHIPYARD_KSERVE_CRDS``); without them the validating tests skip and say why.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
}


def crd_dir() -> Path:
    return Path(os.environ.get("SHIPYARD_KSERVE_CRDS", ROOT.parent / "shared" / "kserve-crds"))


@functools.cache
def served_schema(kind: str) -> dict[str, Any]:
    """openAPIV3Schema of the served (storage) version of ``kind``'s CRD."""
    crd = yaml.safe_load((crd_dir() / CRD_FILES[kind]).read_text())
    versions = [v for v in crd["spec"]["versions"] if v.get("served")]
    version = next((v for v in versions if v.get("storage")), versions[0])
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields the API server would prune or reject: keys not declared where the schema lists properties."""
    if isinstance(instance, dict):
        props = schema.get("properties")
        if props is None or schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        for key, value in instance.items():
            if key not in props:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, props[key], f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise AssertionError unless ``manifest`` validates against its CRD with no undeclared fields."""
    kind = manifest["kind"]
    schema = served_schema(kind)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, f"{kind} fails its CRD schema: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]
    )
    extra = list(unknown_fields(manifest, schema))
    assert not extra, f"{kind} has fields its CRD does not declare: {extra}"


@pytest.fixture
def crd_validate() -> Callable[[dict[str, Any]], None]:
    if not all((crd_dir() / f).exists() for f in CRD_FILES.values()):
        message = f"KServe CRD schemas not found in {crd_dir()} (set SHIPYARD_KSERVE_CRDS)"
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: a missing schema is a failure there
            pytest.fail(message)
        pytest.skip(message)
    return validate_manifest
