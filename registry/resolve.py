"""Resolve ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` to a version and local artifacts.

Public functions:

- ``get_version(model_uri: str, tracking_uri: str | None = None) -> mlflow ModelVersion`` (alias resolved)
- ``resolve_model(model_uri: str, dst: str | Path | None = None, tracking_uri: str | None = None) -> ResolvedModel``
  (downloads the MLmodel directory; ``dst`` defaults to a fresh temporary directory)
- ``load_torch_model(model_uri, tracking_uri=None, resolved=None) -> tuple[nn.Module, np.ndarray | None]``
  (the module in eval mode and the logged input example; ``resolved`` reuses a download)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.registry.errors import ModelVersionNotFound
from shipyard.registry.store import get_client
from shipyard.registry.uris import parse_model_uri

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ResolvedModel:
    """A model version and where its artifacts were downloaded."""

    name: str
    version: int
    run_id: str | None
    local_path: Path
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def input_example(self) -> np.ndarray | None:
        """The logged input example (a numpy array), or None when the model has none."""
        from mlflow.models import Model

        model = Model.load(str(self.local_path))
        example = model.load_input_example(str(self.local_path))
        return None if example is None else np.asarray(example)


def get_version(model_uri: str, tracking_uri: str | None = None) -> Any:
    """The MLflow ``ModelVersion`` for a URI (an alias is resolved to its version).

    Raises: RegistryError (malformed URI), ModelVersionNotFound (unknown name, version or alias).
    """
    from mlflow.exceptions import MlflowException

    ref = parse_model_uri(model_uri)
    client = get_client(tracking_uri)
    try:
        if ref.version is not None:
            return client.get_model_version(ref.name, str(ref.version))
        return client.get_model_version_by_alias(ref.name, str(ref.alias))
    except MlflowException as exc:
        known = ""
        try:
            versions = client.search_model_versions(f"name='{ref.name}'")
            known = ", ".join(sorted({str(v.version) for v in versions}, key=int)) or "none"
            known = f" (versions of {ref.name!r}: {known})"
        except MlflowException:
            pass
        raise ModelVersionNotFound(f"{model_uri}: not found in the registry{known}: {exc.message}") from None


def resolve_model(
    model_uri: str, dst: str | Path | None = None, tracking_uri: str | None = None
) -> ResolvedModel:
    """Download a model version's artifacts (the MLmodel directory) and describe it.

    Raises: RegistryError, ModelVersionNotFound.
    """
    import mlflow

    version = get_version(model_uri, tracking_uri)
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"shipyard-{version.name}-"))
    target.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(target)
    )
    return ResolvedModel(
        name=version.name,
        version=int(version.version),
        run_id=version.run_id,
        local_path=Path(local),
        tags=dict(version.tags or {}),
        aliases=tuple(getattr(version, "aliases", ()) or ()),
    )


def load_torch_model(
    model_uri: str, tracking_uri: str | None = None, resolved: ResolvedModel | None = None
) -> tuple[torch.nn.Module, np.ndarray | None]:
    """The registered PyTorch module (eval mode) and its input example.

    Raises: RegistryError, ModelVersionNotFound; mlflow's error when the version is not a PyTorch model.
    """
    import mlflow.pytorch

    resolved = resolved or resolve_model(model_uri, tracking_uri=tracking_uri)
    module = mlflow.pytorch.load_model(str(resolved.local_path))
    try:
        module.eval()
    except NotImplementedError:
        pass  # a torch.export (pt2) module: already in inference form
    return module, resolved.input_example()
