"""Register a trained model as an MLflow model version (signature, input example, tags).

PyTorch modules, Keras 3 models, sklearn estimators, ONNX models and transformers ``{"model", "tokenizer"}``
dicts are accepted by ``register_module`` (each logged with its own MLflow flavor: ``registry/flavors.py``).

Three sources, one result type; each is idempotent: registering the same source again returns the
existing version (``created=False``) and merges the new tags into it, so re-running a step never
creates a duplicate version and never drops a tag. The source is identified by the tag
``shipyard.source.key`` (the SHA-256 of the weights or file, or the run and artifact name).

Public functions:

- ``register_module(module, input_example, name, *, tags=None, tracking_uri=None,
  experiment=DEFAULT_EXPERIMENT, serialization_format=None) -> RegisteredVersion``
- ``register_file(path, name, *, input_example=None, tags=None, tracking_uri=None,
  experiment=DEFAULT_EXPERIMENT) -> RegisteredVersion``: a whole pickled module (``torch.save(model)``),
  TorchScript (``torch.jit.save``) or ``torch.export`` program (``.pt2``).
- ``register_run(run_id, name, *, artifact_name="model", tags=None, tracking_uri=None) -> RegisteredVersion``:
  a model already logged in a run (its own signature and input example are kept).
- ``module_digest(module) -> str``: SHA-256 over the class name and the state dict.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.registry.digest import sha256_file
from shipyard.registry.errors import RegistryError
from shipyard.registry.lineage import SOURCE_KEY, SOURCE_KIND, SOURCE_RUN_ID, SOURCE_SHA256, stringify_tags
from shipyard.registry.store import DEFAULT_EXPERIMENT, ensure_experiment, get_client

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version. ``created`` is False when an existing version was reused."""

    name: str
    version: int
    run_id: str | None
    source_key: str
    created: bool
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of the module's class and state dict (names, dtypes, shapes, values)."""
    import torch

    digest = hashlib.sha256()
    cls = type(module)
    digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    for key, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _check_name(name: str) -> None:
    if not name or "/" in name or "@" in name or "'" in name:
        raise RegistryError(f"invalid registered model name {name!r}: use letters, digits, '-', '_' or '.'")


def find_version_by_source(client: MlflowClient, name: str, source_key: str) -> Any | None:
    """The existing version of ``name`` whose ``shipyard.source.key`` tag is ``source_key``, if any."""
    versions = client.search_model_versions(f"name='{name}'")
    matches = [v for v in versions if (v.tags or {}).get(SOURCE_KEY) == source_key]
    if not matches:
        return None
    return min(matches, key=lambda v: int(v.version))


def _reuse(client: MlflowClient, existing: Any, tags: Mapping[str, str]) -> RegisteredVersion:
    for key, value in tags.items():
        if (existing.tags or {}).get(key) != value:
            client.set_model_version_tag(existing.name, existing.version, key, value)
    merged = {**(existing.tags or {}), **tags}
    return RegisteredVersion(
        existing.name, int(existing.version), existing.run_id, merged.get(SOURCE_KEY, ""), False, merged
    )


def _as_example(input_example: Any) -> Any:
    if isinstance(input_example, np.ndarray):
        return input_example
    if hasattr(input_example, "detach"):  # a torch tensor
        return input_example.detach().cpu().numpy()
    return input_example


def register_module(
    module: torch.nn.Module,
    input_example: Any,
    name: str,
    *,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    serialization_format: str | None = None,
    _source: tuple[str, str, str] | None = None,
) -> RegisteredVersion:
    """Log ``module`` in a new run (signature inferred from ``input_example``) and register it as ``name``.

    ``module``: any object ``flavors.flavor_of`` accepts (torch, Keras, sklearn, ONNX, transformers).
    ``input_example``: a numpy array or tensor, batch first (MLflow 3's pt2 format needs it); texts for transformers.
    Raises: RegistryError for a bad name or a missing input example; mlflow exceptions for server errors.
    """
    import mlflow

    _check_name(name)
    if input_example is None:
        raise RegistryError(f"register {name!r}: an input_example is required (a batch-first numpy array)")
    if np.ndim(_as_example(input_example)) == 0:
        raise RegistryError(f"register {name!r}: the input example is a scalar; give a batch-first array (batch >= 1)")
    from shipyard.registry.flavors import digest, flavor_of

    flavor = flavor_of(module)
    kind, key, sha = _source or ("module", "", digest(module, flavor))
    key = key or f"sha256:{sha}"
    all_tags = {**stringify_tags(tags or {}), SOURCE_KIND: kind, SOURCE_KEY: key, SOURCE_SHA256: sha}
    client = get_client(tracking_uri)
    existing = find_version_by_source(client, name, key)
    if existing is not None:
        return _reuse(client, existing, all_tags)
    experiment_id = ensure_experiment(experiment, tracking_uri)
    if flavor != "pytorch":
        return _register_flavor(module, flavor, input_example, name, all_tags, experiment_id)
    try:
        module.eval()
    except NotImplementedError:
        pass  # a torch.export program's module (.pt2) is already in inference form and refuses eval()
    if serialization_format is None and _is_torchscript(module):
        serialization_format = "pickle"  # MLflow's pt2 format refuses TorchScript; pickle saves it with torch.jit
    example = _as_example(input_example)
    if isinstance(example, np.ndarray) and example.ndim > 0 and example.shape[0] == 1:
        # torch.export (MLflow's pt2 format) specializes size-1 dimensions: a batch of one would
        # freeze the logged program at batch 1, so log the example twice to keep the batch dynamic.
        example = np.repeat(example, 2, axis=0)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}") as run:
        mlflow.set_tags({SOURCE_KIND: kind, SOURCE_KEY: key})
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            input_example=example,
            pip_requirements=[f"torch=={_torch_version()}"],
            serialization_format=serialization_format,
        )
    all_tags[SOURCE_RUN_ID] = run.info.run_id
    version = mlflow.register_model(info.model_uri, name, tags=all_tags)
    return RegisteredVersion(name, int(version.version), run.info.run_id, key, True, dict(all_tags))


def _register_flavor(
    obj: Any, flavor: str, input_example: Any, name: str, tags: dict[str, str], experiment_id: str
) -> RegisteredVersion:
    import mlflow

    from shipyard.registry.flavors import log_flavor

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}") as run:
        mlflow.set_tags({SOURCE_KIND: tags[SOURCE_KIND], SOURCE_KEY: tags[SOURCE_KEY]})
        info = log_flavor(obj, flavor, _as_example(input_example))
    tags = {**tags, SOURCE_RUN_ID: run.info.run_id, "shipyard.source.flavor": flavor}
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    return RegisteredVersion(name, int(version.version), run.info.run_id, tags[SOURCE_KEY], True, dict(tags))


def _is_torchscript(module: Any) -> bool:
    import torch

    return isinstance(module, torch.jit.ScriptModule)


def _torch_version() -> str:
    import torch

    return str(torch.__version__).split("+")[0]


def load_module_file(path: str | Path) -> torch.nn.Module:
    """Load a saved model file: ``.pt2`` (torch.export), TorchScript, or a whole pickled module.

    Raises: RegistryError when the file is missing or holds only a state dict (then build the module
    in code and call ``register_module``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"model file not found: {path}")
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()  # type: ignore[no-any-return]
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise RegistryError(
                f"{path} is not a torch.export program ({' '.join(str(exc).split())[:200]}): save one with "
                "torch.export.save(torch.export.export(model, example), 'model.pt2')"
            ) from None
    try:
        return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-any-return]
    except (RuntimeError, ValueError):
        pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as exc:  # the pickled module's class is not importable here
        raise RegistryError(
            f"{path} is a pickled module whose code cannot be imported here ({exc}): save it with torch.export "
            "(.pt2) or torch.jit.save (TorchScript), or run from where its class is importable"
        ) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise RegistryError(
            f"{path} is not a model file torch can read ({' '.join(str(exc).split())[:200]}): give a .pt2 "
            "(torch.export.save), a TorchScript file (torch.jit.save) or a pickled module (torch.save(model))"
        ) from None
    if isinstance(obj, torch.nn.Module):
        return obj
    raise RegistryError(
        f"{path} holds a {type(obj).__name__}, not a module; a state dict cannot be registered alone: "
        "build the module in code, load the state dict and call register_module(module, input_example, name)"
    )


def register_file(
    path: str | Path,
    name: str,
    *,
    input_example: Any,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> RegisteredVersion:
    """Register a saved model file (or a TF2 SavedModel folder); the file's (folder's) SHA-256 identifies the source.

    Raises: RegistryError (missing file, a state dict, no input example).
    """
    if Path(path).is_dir() and (Path(path) / "saved_model.pb").is_file():  # a TF2 SavedModel folder
        from shipyard.registry.digest import sha256_tree
        from shipyard.registry.flavors import load_saved_model

        sha, module = sha256_tree(path), load_saved_model(path)
    else:
        sha, module = sha256_file(path), load_module_file(path)
    return register_module(
        module,
        input_example,
        name,
        tags={**dict(tags or {}), "shipyard.source.file": str(Path(path).resolve())},
        tracking_uri=tracking_uri,
        experiment=experiment,
        _source=("file", f"sha256:{sha}", sha),
    )


def register_run(
    run_id: str,
    name: str,
    *,
    artifact_name: str = "model",
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> RegisteredVersion:
    """Register the model logged in run ``run_id`` under ``artifact_name`` (``runs:/RUN_ID/NAME``).

    Raises: RegistryError when the run has no such model; mlflow exceptions for server errors.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    _check_name(name)
    client = get_client(tracking_uri)
    key = f"run:{run_id}/{artifact_name}"
    all_tags = {**stringify_tags(tags or {}), SOURCE_KIND: "run", SOURCE_KEY: key, SOURCE_RUN_ID: run_id}
    existing = find_version_by_source(client, name, key)
    if existing is not None:
        return _reuse(client, existing, all_tags)
    try:
        client.get_run(run_id)
        version = mlflow.register_model(f"runs:/{run_id}/{artifact_name}", name, tags=all_tags)
    except MlflowException as exc:
        raise RegistryError(
            f"cannot register runs:/{run_id}/{artifact_name}: {exc.message}; check the run id and the name the "
            "model was logged with (mlflow.pytorch.log_model(..., name=...))"
        ) from None
    return RegisteredVersion(name, int(version.version), run_id, key, True, dict(all_tags))
