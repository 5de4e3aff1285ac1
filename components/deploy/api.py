"""The deploy step as library functions: render, deploy to KServe, deploy locally.

The kserve SDK is imported only inside ``render_kserve``/``deploy_kserve`` (its protos clash with
tritonclient.grpc's), so importing this module is cheap and safe anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.components.deploy.spec import GRPC_PORT, HTTP_PORT, InferenceServiceSpec, RuntimeSpec


@dataclass(frozen=True)
class DeployResult:
    """Where a deployment serves. ``url`` is the OIP v2 REST base URL; ``grpc_url`` is host:port when known."""

    target: str  # "kserve" | "local"
    name: str
    url: str | None
    grpc_url: str | None = None
    internal_url: str | None = None
    ready: bool = True


def kserve_manifests(isvc: InferenceServiceSpec, runtime: RuntimeSpec | None = None) -> list[dict[str, Any]]:
    """The ServingRuntime and the InferenceService as plain dicts (runtime first; ``None`` skips it).

    Raises:
        ValueError: ``runtime`` is not the runtime the InferenceService names.
    """
    from shipyard.components.deploy import manifests

    if runtime is not None and runtime.name != isvc.runtime:
        raise ValueError(
            f"the InferenceService uses runtime {isvc.runtime!r} but the runtime to apply is {runtime.name!r}: "
            "give both the same name"
        )

    docs = []
    if runtime is not None:
        docs.append(manifests.to_dict(manifests.serving_runtime(runtime, namespace=isvc.namespace)))
    docs.append(manifests.to_dict(manifests.inference_service(isvc, runtime)))
    return docs


def render_kserve(isvc: InferenceServiceSpec, runtime: RuntimeSpec | None = None) -> str:
    """The manifests as multi-document YAML (what ``--dry-run`` prints; ``kubectl apply -f -`` takes it)."""
    from shipyard.components.deploy.manifests import to_yaml

    return to_yaml(kserve_manifests(isvc, runtime))


def deploy_kserve(
    isvc: InferenceServiceSpec,
    runtime: RuntimeSpec | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    wait: bool = True,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    on_status: Callable[[Any], None] | None = None,
) -> DeployResult:
    """Apply the ServingRuntime (when given) and the InferenceService, then wait for Ready.

    Re-running with the same specs is harmless (create, or patch when it exists).

    Raises:
        DeployError: no cluster configured, the API server refused a manifest, or KServe reports a
            failure waiting cannot fix.
        DeployTimeout: not Ready within ``timeout_s``.
    """
    from shipyard.components.deploy import kube

    api = kube.api_client(kubeconfig, context)
    applied: dict[str, Any] = {}
    for manifest in kserve_manifests(isvc, runtime):
        applied = kube.apply(api, manifest)
    if not wait:
        return DeployResult(target="kserve", name=isvc.name, url=None, ready=False)
    status = kube.wait_ready(
        api,
        isvc.name,
        isvc.namespace,
        generation=(applied.get("metadata") or {}).get("generation"),
        timeout_s=timeout_s,
        poll_s=poll_s,
        on_status=on_status,
    )
    return DeployResult(
        target="kserve", name=isvc.name, url=status.url, internal_url=status.internal_url, ready=status.ready
    )


def deploy_local(
    name: str,
    repository: str | Path,
    *,
    http_port: int = HTTP_PORT,
    grpc_port: int = GRPC_PORT,
    state_dir: str | Path | None = None,
    extra_args: Sequence[str] = (),
    timeout_s: float = 120.0,
) -> DeployResult:
    """Serve ``repository`` with a local runtime process and wait for it to be ready.

    Raises:
        DeployError / DeployTimeout: see ``LocalTarget.start``.
    """
    from shipyard.components.deploy.local import LocalTarget

    deployment = LocalTarget(state_dir).start(
        name, repository, http_port=http_port, grpc_port=grpc_port, extra_args=extra_args, timeout_s=timeout_s
    )
    return DeployResult(target="local", name=name, url=deployment.http_url, grpc_url=deployment.grpc_url)
