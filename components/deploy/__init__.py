"""Deploy a published model repository: KServe (ServingRuntime + InferenceService) or a local process.

Public API (cheap to import; the kserve SDK loads only when manifests are rendered):

- ``RuntimeSpec``, ``InferenceServiceSpec``, ``Autoscaling``: validated settings.
- ``render_kserve(isvc, runtime)`` -> YAML; ``kserve_manifests(...)`` -> dicts.
- ``deploy_kserve(isvc, runtime, kubeconfig=..., timeout_s=...)`` -> ``DeployResult``.
- ``deploy_local(name, repository, http_port=..., grpc_port=...)`` -> ``DeployResult``;
  ``LocalTarget`` finds, lists and stops local deployments.
- ``DeployError``, ``DeployTimeout``.
"""

from shipyard.components.deploy.api import DeployResult, deploy_kserve, deploy_local, kserve_manifests, render_kserve
from shipyard.components.deploy.errors import DeployError, DeployTimeout
from shipyard.components.deploy.local import LocalDeployment, LocalTarget
from shipyard.components.deploy.spec import Autoscaling, InferenceServiceSpec, RuntimeSpec

__all__ = [
    "Autoscaling",
    "DeployError",
    "DeployResult",
    "DeployTimeout",
    "InferenceServiceSpec",
    "LocalDeployment",
    "LocalTarget",
    "RuntimeSpec",
    "deploy_kserve",
    "deploy_local",
    "kserve_manifests",
    "render_kserve",
]
