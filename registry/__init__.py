"""MLflow 3 model registry: register, resolve, record lineage, promote by alias through a gate.

Importing this package is cheap: mlflow and torch are imported inside the functions.

- ``register_module(module, input_example, name, *, tags=None, tracking_uri=None, experiment="shipyard",
  serialization_format=None) -> RegisteredVersion``
- ``register_file(path, name, *, input_example, tags=None, tracking_uri=None, experiment="shipyard")
  -> RegisteredVersion``
- ``register_run(run_id, name, *, artifact_name="model", tags=None, tracking_uri=None) -> RegisteredVersion``
- ``get_version(model_uri, tracking_uri=None)``; ``resolve_model(model_uri, dst=None, tracking_uri=None)
  -> ResolvedModel``; ``load_torch_model(model_uri, tracking_uri=None) -> (module, input_example)``
- ``record_lineage(model_uri, tags, tracking_uri=None)``; ``get_lineage(model_uri, tracking_uri=None)``
- ``promote(model_uri, alias, *, gate=None, tracking_uri=None) -> str``; ``Gate``; ``gate_reasons``
- ``resolve_tracking_uri(tracking_uri=None)``, ``get_client(tracking_uri=None)``, ``ensure_experiment(...)``
- ``parse_model_uri(uri) -> ModelRef``
- errors: ``RegistryError``, ``ModelVersionNotFound``, ``PromotionRefused``
"""

from shipyard.registry.errors import ModelVersionNotFound, PromotionRefused, RegistryError
from shipyard.registry.lineage import get_lineage, record_lineage
from shipyard.registry.promote import Gate, gate_reasons, promote
from shipyard.registry.register import (
    RegisteredVersion,
    module_digest,
    register_file,
    register_module,
    register_run,
)
from shipyard.registry.resolve import ResolvedModel, get_version, load_torch_model, resolve_model
from shipyard.registry.store import ensure_experiment, get_client, resolve_tracking_uri
from shipyard.registry.uris import ModelRef, parse_model_uri

__all__ = [
    "Gate",
    "ModelRef",
    "ModelVersionNotFound",
    "PromotionRefused",
    "RegisteredVersion",
    "RegistryError",
    "ResolvedModel",
    "ensure_experiment",
    "gate_reasons",
    "get_client",
    "get_lineage",
    "get_version",
    "load_torch_model",
    "module_digest",
    "parse_model_uri",
    "promote",
    "record_lineage",
    "register_file",
    "register_module",
    "register_run",
    "resolve_model",
    "resolve_tracking_uri",
]
