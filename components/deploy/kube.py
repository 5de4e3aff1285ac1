"""Apply manifests with the kubernetes client and wait for an InferenceService to become Ready.

Takes plain manifest dicts (see ``manifests.to_dict``), so this module does not import the kserve SDK.
Apply is idempotent: create, and on 409 (already exists) a JSON merge patch of the same body.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from shipyard.components.deploy.errors import DeployError, DeployTimeout

PLURALS = {
    "InferenceService": "inferenceservices",
    "ServingRuntime": "servingruntimes",
    "ClusterServingRuntime": "clusterservingruntimes",
}
# KServe's model status when a rollout cannot succeed by waiting (see the InferenceService status API).
_FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """A kubernetes ApiClient from ``kubeconfig`` (default: $KUBECONFIG or ~/.kube/config), else in-cluster.

    Raises:
        DeployError: no usable kubeconfig and not running inside a cluster.
    """
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError) as exc:
        if kubeconfig is not None:
            raise DeployError(f"cannot load kubeconfig {kubeconfig!r}: {exc}") from exc
        try:
            config.load_incluster_config()
        except ConfigException as exc2:
            raise DeployError(
                "no Kubernetes cluster configured: pass --kubeconfig, set KUBECONFIG, or run inside a cluster "
                f"({exc}; in-cluster: {exc2}); to run without a cluster use --target local"
            ) from exc2
        return client.ApiClient()


def _describe(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return f"{exc.status} {body.get('reason', exc.reason)}: {body.get('message', '')}"
    except (ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def _coordinates(manifest: Mapping[str, Any]) -> tuple[str, str, str, str, str | None]:
    try:
        group, version = manifest["apiVersion"].split("/")
        kind = manifest["kind"]
        name = manifest["metadata"]["name"]
    except (KeyError, ValueError) as exc:
        raise DeployError(f"not a KServe manifest (need apiVersion group/version, kind, metadata.name): {exc}") from exc
    if kind not in PLURALS:
        raise DeployError(f"cannot apply kind {kind!r}: shipyard applies {', '.join(PLURALS)}")
    namespace = None if kind.startswith("Cluster") else manifest["metadata"].get("namespace", "default")
    return group, version, PLURALS[kind], name, namespace


def _merge_patch(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The patch body: the manifest, plus explicit nulls that clear settings the manifest leaves out."""
    body = copy.deepcopy(dict(manifest))
    predictor = body.get("spec", {}).get("predictor")
    if body.get("kind") == "InferenceService" and isinstance(predictor, dict):
        # A merge patch keeps absent keys: clear a finished canary and a dropped autoscaling rule.
        for key in ("canaryTrafficPercent", "autoScaling", "scaleMetric", "scaleTarget"):
            predictor.setdefault(key, None)
    return body


def apply(api: client.ApiClient, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the object, or merge-patch it when it exists (so re-running is harmless).

    Returns:
        The object as the API server stored it (with ``metadata.generation``).
    Raises:
        DeployError: the API server refused the create or the patch (its status and message included).
    """
    group, version, plural, name, namespace = _coordinates(manifest)
    objects = client.CustomObjectsApi(api)
    result: dict[str, Any]
    try:
        if namespace is None:
            result = objects.create_cluster_custom_object(group, version, plural, dict(manifest))
        else:
            result = objects.create_namespaced_custom_object(group, version, namespace, plural, dict(manifest))
        return result
    except ApiException as exc:
        if exc.status != 409:
            raise DeployError(f"creating {plural}/{name} failed: {_describe(exc)}") from exc
    try:
        if namespace is None:
            result = objects.patch_cluster_custom_object(group, version, plural, name, _merge_patch(manifest))
        else:
            result = objects.patch_namespaced_custom_object(
                group, version, namespace, plural, name, _merge_patch(manifest)
            )
    except ApiException as exc:
        raise DeployError(f"updating {plural}/{name} failed: {_describe(exc)}") from exc
    return result


@dataclass(frozen=True)
class ServiceStatus:
    """What a user wants to know about an InferenceService."""

    name: str
    namespace: str
    ready: bool
    url: str | None  # external URL (status.url)
    internal_url: str | None  # in-cluster address (status.address.url)
    message: str  # why it is not ready, or ""
    generation: int | None
    observed_generation: int | None
    transition: str | None = None  # KServe's modelStatus.transitionStatus (UpToDate, InProgress, ...)

    @property
    def failed(self) -> bool:
        """KServe says waiting cannot help (the model failed to load, or the spec is invalid)."""
        return self.transition in _FAILED_TRANSITIONS


def parse_status(obj: Mapping[str, Any]) -> ServiceStatus:
    """Read readiness and URLs from an InferenceService object."""
    meta = obj.get("metadata", {})
    status = obj.get("status") or {}
    ready_cond = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    not_ready = [c for c in status.get("conditions", []) if c.get("status") != "True"]
    message = "; ".join(
        f"{c.get('type')}: {c.get('reason', '')} {c.get('message', '')}".strip() for c in not_ready
    )
    model_status = status.get("modelStatus") or {}
    failure = model_status.get("lastFailureInfo") or {}
    if failure:
        message = f"{message}; model: {failure.get('reason', '')} {failure.get('message', '')}".strip("; ")
    return ServiceStatus(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        ready=bool(ready_cond and ready_cond.get("status") == "True"),
        url=status.get("url"),
        internal_url=(status.get("address") or {}).get("url"),
        message=message or ("no status yet" if not status else ""),
        generation=meta.get("generation"),
        observed_generation=status.get("observedGeneration"),
        transition=model_status.get("transitionStatus"),
    )


def get_status(api: client.ApiClient, name: str, namespace: str) -> ServiceStatus:
    """The current status of InferenceService ``namespace/name``.

    Raises:
        DeployError: it does not exist, or the API server refused the request.
    """
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name
        )
    except ApiException as exc:
        raise DeployError(f"reading inferenceservices/{name} in {namespace!r} failed: {_describe(exc)}") from exc
    return parse_status(obj)


def wait_ready(
    api: client.ApiClient,
    name: str,
    namespace: str,
    *,
    generation: int | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    on_status: Callable[[ServiceStatus], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ServiceStatus:
    """Poll until the InferenceService is Ready for ``generation`` (the one just applied).

    A Ready condition left over from an older generation does not count. ``on_status`` sees every
    status read (progress reporting).

    Raises:
        DeployError: KServe reports a failure that waiting cannot fix (a model that failed to load,
            an invalid spec), or the object cannot be read.
        DeployTimeout: not Ready within ``timeout_s``; the message carries the last status.
    """
    deadline = clock() + timeout_s
    while True:
        status = get_status(api, name, namespace)
        if on_status is not None:
            on_status(status)
        current = generation is None or (status.observed_generation or 0) >= generation
        if status.ready and current:
            return status
        if current and status.failed:
            raise DeployError(f"inferenceservices/{name} cannot become ready ({status.transition}): {status.message}")
        remaining = deadline - clock()
        if remaining <= 0:
            raise DeployTimeout(
                f"inferenceservices/{name} in {namespace!r} not ready after {timeout_s:g} s: "
                f"{status.message or 'no reason given'}"
                " (kubectl describe inferenceservice shows events; raise --timeout for large models)"
            )
        sleep(min(poll_s, remaining))


def delete(api: client.ApiClient, name: str, namespace: str) -> bool:
    """Delete InferenceService ``namespace/name``; False when it did not exist.

    Raises:
        DeployError: the API server refused the delete.
    """
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise DeployError(f"deleting inferenceservices/{name} failed: {_describe(exc)}") from exc
    return True


def get_service(api: client.ApiClient, name: str, namespace: str) -> dict[str, Any] | None:
    """InferenceService ``namespace/name`` as the API server stores it; None when it does not exist.

    Raises:
        DeployError: the API server refused the request.
    """
    try:
        obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise DeployError(f"reading inferenceservices/{name} in {namespace!r} failed: {_describe(exc)}") from exc
    return obj


def list_services(api: client.ApiClient, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
    """The InferenceServices in ``namespace`` (those matching ``label_selector`` when given).

    Raises:
        DeployError: the API server refused the request.
    """
    try:
        listing = client.CustomObjectsApi(api).list_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", label_selector=label_selector
        )
    except ApiException as exc:
        raise DeployError(f"listing inferenceservices in {namespace!r} failed: {_describe(exc)}") from exc
    items: list[dict[str, Any]] = listing.get("items") or []
    return items


def patch_service(api: client.ApiClient, name: str, namespace: str, patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch of InferenceService ``namespace/name`` (only the fields in ``patch`` change).

    Raises:
        DeployError: it does not exist, or the API server refused the patch.
    """
    try:
        result: dict[str, Any] = client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name, dict(patch)
        )
    except ApiException as exc:
        raise DeployError(f"updating inferenceservices/{name} failed: {_describe(exc)}") from exc
    return result
