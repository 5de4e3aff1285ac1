"""The MLflow deployments plugin's KServe target: ``-t shipyard:/kserve`` (namespace of the kubeconfig context)
or ``-t shipyard:/kserve/NAMESPACE``.

    mlflow deployments create -t shipyard:/kserve/ml --name digits -m s3://models/digits-repo
    mlflow deployments create -t shipyard:/kserve/ml --name digits -m models:/digits@champion -C storage_uri=s3://models/repos
    mlflow deployments update -t shipyard:/kserve/ml --name digits -m models:/digits/4 -C canary_percent=10
    mlflow deployments update -t shipyard:/kserve/ml --name digits -C canary_percent=100   # promote the canary
    mlflow deployments predict -t shipyard:/kserve/ml --name digits --input-path rows.json

``create`` applies the same ServingRuntime and InferenceService as ``shipyard deploy --target kserve`` (one
builder, ``components/deploy/spec.py`` + ``manifests.py``) and waits for Ready. ``-m`` is either a model
repository already on a store (``s3://``, ``gs://``, ``pvc://``...) or a registry URI (``models:/NAME/V``,
``models:/NAME@ALIAS``), which is first optimized, validated and published into
``STORAGE_URI/NAME/MODEL-vVERSION`` (a repository of its own, so each model version is a new storageUri and
KServe makes a new revision of it). ``update`` rolls a new model out as a KServe canary: only the predictor's
``storageUri`` and ``canaryTrafficPercent`` change (``canary_percent``, default 10); ``canary_percent=100``
without ``-m`` promotes the canary to all traffic, ``0`` sends all traffic back to the previous revision.
``delete`` removes the InferenceService (the ServingRuntime stays; other services use it).
``predict`` sends Open Inference Protocol requests to the InferenceService URL (``status.url``); set
``SHIPYARD_KSERVE_INGRESS`` (e.g. ``http://localhost:8080`` after ``kubectl port-forward`` of the ingress
gateway) to send them there with the service's host name in the ``Host`` header.

The cluster is the kubeconfig's current context (``$KUBECONFIG`` or ``~/.kube/config``; in-cluster otherwise).
Config keys (``-C``) mirror ``shipyard deploy``'s options: image, runtime, apply_runtime, model_format, protocol,
gpus, cpu, memory, min_replicas, max_replicas, scale_metric, scale_target, prometheus_url, deployment_mode,
timeout_s, wait; for a registry URI also storage_uri, data_path, optimize_target, precision, max_batch_size,
tracking_uri; model_name names the model inside the repository (default: the deployment name).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.components.deploy.mlflow_plugin import PluginError, _as_feeds, publish_model

MODEL_URI_ANNOTATION = "shipyard.io/model-uri"
MODEL_NAME_ANNOTATION = "shipyard.io/model-name"
INGRESS_ENV = "SHIPYARD_KSERVE_INGRESS"
DEFAULT_CANARY_PERCENT = 10
_SELECTOR = "app.kubernetes.io/name=shipyard,app.kubernetes.io/component=inference-service"
_REGISTRY_SCHEMES = ("models:", "runs:")
_INT_KEYS = ("gpus", "min_replicas", "max_replicas", "canary_percent", "max_batch_size")
_FLOAT_KEYS = ("scale_target", "timeout_s")
_BOOL_KEYS = ("apply_runtime", "wait")
_SPEC_KEYS = ("image", "runtime", "apply_runtime", "model_format", "protocol", "gpus", "cpu", "memory",
              "min_replicas", "max_replicas", "scale_metric", "scale_target", "prometheus_url",
              "deployment_mode")  # fmt: skip
_PUBLISH_KEYS = ("storage_uri", "data_path", "optimize_target", "precision", "max_batch_size", "tracking_uri")
_CREATE_KEYS = (*_SPEC_KEYS, *_PUBLISH_KEYS, "model_name", "timeout_s", "wait")
_UPDATE_KEYS = (*_PUBLISH_KEYS, "canary_percent", "timeout_s", "wait")
# OIP datatype -> numpy dtype (BYTES travels as JSON strings)
_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
           "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
           "FP32": "float32", "FP64": "float64", "BYTES": "object"}  # fmt: skip


def _config(config: dict[str, Any] | None, allowed: tuple[str, ...], verb: str) -> dict[str, Any]:
    """The ``-C`` values typed; an unknown key is a PluginError listing the keys ``verb`` takes."""
    values = dict(config or {})
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        hint = " (update changes only the model and the canary split: delete and create to change settings)"
        raise PluginError(
            f"{verb} -t shipyard:/kserve does not take {unknown}: it takes {', '.join(sorted(allowed))}"
            + (hint if verb == "update" and set(unknown) & set(_SPEC_KEYS) else "")
        )
    try:
        for key in _INT_KEYS:
            if key in values:
                values[key] = int(values[key])
        for key in _FLOAT_KEYS:
            if key in values:
                values[key] = float(values[key])
    except ValueError as exc:
        raise PluginError(f"config: {exc} (give numbers for {', '.join(_INT_KEYS + _FLOAT_KEYS)})") from None
    for key in _BOOL_KEYS:
        if key in values and not isinstance(values[key], bool):
            text = str(values[key]).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise PluginError(f"config {key}={values[key]!r}: use true or false")
            values[key] = text in ("true", "1", "yes")
    return values


def _default_namespace() -> str:
    """The namespace of the kubeconfig's current context (``default`` when it names none or there is none)."""
    from kubernetes import config as kube_config

    try:
        _, active = kube_config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
    except Exception:  # no kubeconfig: in-cluster, or nothing configured (api_client reports that)
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


class KServeDeployments:
    """create/update/delete/list/get/predict on KServe InferenceServices (see the module docstring)."""

    def __init__(self, namespace: str | None) -> None:
        from shipyard.components.deploy.spec import check_name

        if namespace:
            try:
                check_name(namespace, "namespace")
            except ValueError as exc:
                raise PluginError(f"target shipyard:/kserve/{namespace}: {exc}") from None
        self._namespace = namespace

    @property
    def namespace(self) -> str:
        """The target's namespace, else the kubeconfig context's (read at each call, as kubectl does)."""
        return self._namespace or _default_namespace()

    def _api(self) -> Any:
        from shipyard.components.deploy import kube
        from shipyard.components.deploy.errors import DeployError

        try:
            return kube.api_client(os.environ.get("KUBECONFIG"))
        except DeployError as exc:
            if os.environ.get("KUBECONFIG"):
                raise  # its message names the file and what is wrong with it
            raise PluginError(
                "no Kubernetes cluster configured for -t shipyard:/kserve: set KUBECONFIG (or create ~/.kube/config, "
                "or run inside a cluster); -t shipyard deploys on this machine instead"
            ) from exc

    @staticmethod
    def _check_model_uri(model_uri: str, cfg: dict[str, Any]) -> None:
        """Refuse a model URI KServe cannot be given, before anything is read or published."""
        if not model_uri.startswith(_REGISTRY_SCHEMES):
            if "://" not in model_uri:
                raise PluginError(
                    f"model URI {model_uri!r}: KServe reads a store (s3://, gs://, pvc://...) or give a registry URI "
                    "(models:/NAME/VERSION or models:/NAME@ALIAS) with -C storage_uri=s3://BUCKET/PREFIX"
                )
            return
        if model_uri.startswith("runs:"):
            raise PluginError(f"{model_uri}: register it first (shipyard register) and deploy models:/NAME/VERSION")
        if not cfg.get("storage_uri"):
            raise PluginError(
                f"{model_uri} must be published where KServe can read it: pass -C storage_uri=s3://BUCKET/PREFIX "
                "(or gs://, az://), or deploy a published repository's URI with -m"
            )

    def _storage_uri(self, name: str, model_uri: str, cfg: dict[str, Any]) -> str:
        """Where KServe reads the repository: ``model_uri`` itself, or where a registry model was published."""
        self._check_model_uri(model_uri, cfg)
        if not model_uri.startswith(_REGISTRY_SCHEMES):
            return model_uri
        root = cfg["storage_uri"]
        from shipyard import registry

        version = registry.get_version(model_uri, cfg.get("tracking_uri"))
        repository = f"{str(root).rstrip('/')}/{name}/{version.name}-v{version.version}"
        _publish_apart(cfg.get("model_name", name), f"models:/{version.name}/{version.version}", cfg, repository)
        return repository

    def _specs(self, name: str, storage_uri: str, model_uri: str, cfg: dict[str, Any]) -> tuple[Any, Any]:
        """The same specs ``shipyard deploy --target kserve`` builds from the same settings."""
        from shipyard.components.deploy import Autoscaling, InferenceServiceSpec, RuntimeSpec

        annotations = {MODEL_URI_ANNOTATION: model_uri}
        if cfg.get("model_name"):
            annotations[MODEL_NAME_ANNOTATION] = cfg["model_name"]
        scaling = None
        try:
            if cfg.get("scale_metric"):
                extra = {"prometheus_url": cfg["prometheus_url"]} if cfg.get("prometheus_url") else {}
                scaling = Autoscaling(cfg["scale_metric"], cfg.get("scale_target", 8), **extra)
            resources = {k: cfg[k] for k in ("model_format", "gpus", "cpu", "memory", "min_replicas", "max_replicas")
                         if k in cfg}  # fmt: skip
            runtime = cfg.get("runtime", "shipyard-runtime")
            isvc = InferenceServiceSpec(
                name=name, storage_uri=storage_uri, namespace=self.namespace, runtime=runtime,
                protocol=cfg.get("protocol", "v2"), autoscaling=scaling, deployment_mode=cfg.get("deployment_mode"),
                annotations=annotations, **resources,
            )  # fmt: skip
            runtime_spec = None
            if cfg.get("apply_runtime", True):
                image = {"image": cfg["image"]} if cfg.get("image") else {}
                runtime_spec = RuntimeSpec(name=runtime, **image)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        return isvc, runtime_spec

    def create(self, name: str, model_uri: str, config: dict[str, Any] | None) -> dict[str, Any]:
        from shipyard.components.deploy import deploy_kserve, kube
        from shipyard.components.deploy.spec import check_name

        cfg = _config(config, _CREATE_KEYS, "create")
        try:
            check_name(name, "deployment name")
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        self._check_model_uri(model_uri, cfg)
        api = self._api()
        if kube.get_service(api, name, self.namespace) is not None:
            raise PluginError(
                f"InferenceService {self.namespace}/{name} exists: `mlflow deployments update -t "
                f"shipyard:/kserve/{self.namespace} --name {name} -m MODEL_URI` rolls a new model out as a canary, "
                "`mlflow deployments delete` removes it"
            )
        storage_uri = self._storage_uri(name, model_uri, cfg)
        isvc, runtime_spec = self._specs(name, storage_uri, model_uri, cfg)
        deploy_kserve(isvc, runtime_spec, kubeconfig=os.environ.get("KUBECONFIG"), wait=cfg.get("wait", True),
                      timeout_s=cfg.get("timeout_s", 600.0), poll_s=_poll_s())  # fmt: skip
        return self.get(name)

    def update(self, name: str, model_uri: str | None, config: dict[str, Any] | None) -> dict[str, Any]:
        from shipyard.components.deploy import kube

        cfg = _config(config, _UPDATE_KEYS, "update")
        percent = cfg.get("canary_percent", DEFAULT_CANARY_PERCENT if model_uri else None)
        if percent is None:
            raise PluginError("update needs -m MODEL_URI (a canary of a new model) or -C canary_percent=0..100")
        if not 0 <= percent <= 100:
            raise PluginError(f"canary_percent {percent} must be within 0..100 (100 promotes, 0 rolls back)")
        if model_uri is not None:
            self._check_model_uri(model_uri, cfg)
        api = self._api()
        current = self._existing(api, name)
        annotations = current["metadata"].get("annotations") or {}
        if annotations.get("serving.kserve.io/deploymentMode") == "Standard":
            raise PluginError(
                f"{self.namespace}/{name} runs in Standard mode, where KServe splits no traffic: a canary needs "
                "Serverless mode (delete and create it without KEDA autoscaling or deployment_mode=Standard)"
            )
        predictor: dict[str, Any] = {"canaryTrafficPercent": None if percent == 100 else percent}
        patch: dict[str, Any] = {"spec": {"predictor": predictor}}
        if model_uri is not None:
            cfg.setdefault("model_name", annotations.get(MODEL_NAME_ANNOTATION, name))
            predictor["model"] = {"storageUri": self._storage_uri(name, model_uri, cfg)}
            patch["metadata"] = {"annotations": {MODEL_URI_ANNOTATION: model_uri}}
        applied = kube.patch_service(api, name, self.namespace, patch)
        if cfg.get("wait", True):
            kube.wait_ready(api, name, self.namespace, generation=(applied.get("metadata") or {}).get("generation"),
                            timeout_s=cfg.get("timeout_s", 600.0), poll_s=_poll_s())  # fmt: skip
        return self.get(name)

    def delete(self, name: str) -> None:
        from shipyard.components.deploy import kube

        kube.delete(self._api(), name, self.namespace)  # idempotent, as MLflow asks: a missing service is fine

    def list(self) -> list[dict[str, Any]]:
        from shipyard.components.deploy import kube

        return [describe(obj) for obj in kube.list_services(self._api(), self.namespace, _SELECTOR)]

    def get(self, name: str) -> dict[str, Any]:
        return describe(self._existing(self._api(), name))

    def _existing(self, api: Any, name: str) -> dict[str, Any]:
        from shipyard.components.deploy import kube

        obj = kube.get_service(api, name, self.namespace)
        if obj is None:
            raise PluginError(
                f"no InferenceService {name!r} in namespace {self.namespace!r}: `mlflow deployments list -t "
                f"shipyard:/kserve/{self.namespace}` shows those there"
            )
        return obj

    def predict(self, name: str | None, inputs: Any) -> dict[str, Any]:
        if name is None:
            raise PluginError("predict needs the deployment name (--name)")
        described = self.get(name)
        if not described["url"]:
            raise PluginError(f"InferenceService {self.namespace}/{name} has no URL yet: {described['message']}")
        return infer(described["url"], described["model_name"], inputs)


def _publish_in_child(name: str, model_uri: str, cfg: dict[str, Any], repository: str) -> tuple[int, str] | None:
    """``publish_model`` in a child process; returns None, or (exit code, one line) for what it raised."""
    from shipyard.components.user_errors import classify

    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-kserve-") as work:
            publish_model(name, model_uri, cfg, repository, Path(work))
    except Exception as exc:
        outcome = classify(exc)
        return outcome.code, outcome.message
    return None


def _publish_apart(name: str, model_uri: str, cfg: dict[str, Any], repository: str) -> None:
    """Publish in a spawned process: publishing loads tritonclient.grpc's protos (the repository's config schema),
    rendering the manifests loads the kserve SDK's, and both define the ``inference`` package, so one process
    cannot hold both. Raises PluginError with the child's one line."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        failure = pool.submit(_publish_in_child, name, model_uri, cfg, repository).result()
    if failure is not None:
        raise PluginError(f"publishing {model_uri} to {repository} failed: {failure[1]}", failure[0])


def _poll_s() -> float:
    return float(os.environ.get("SHIPYARD_KSERVE_POLL_S", "2"))


def describe(obj: dict[str, Any]) -> dict[str, Any]:
    """What ``mlflow deployments get/list`` show for an InferenceService object."""
    from shipyard.components.deploy import kube

    status = kube.parse_status(obj)
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    components = (obj.get("status") or {}).get("components") or {}
    traffic = (components.get("predictor") or {}).get("traffic") or []
    return {
        "name": status.name,
        "namespace": status.namespace,
        "target": "kserve",
        "flavor": "shipyard",
        "ready": status.ready,
        "url": status.url,
        "internal_url": status.internal_url,
        "message": status.message,
        "storage_uri": (predictor.get("model") or {}).get("storageUri"),
        "canary_percent": predictor.get("canaryTrafficPercent"),
        "traffic": [
            {"revision": t.get("revisionName"), "percent": t.get("percent"), "latest": bool(t.get("latestRevision"))}
            for t in traffic
        ],
        "model_uri": annotations.get(MODEL_URI_ANNOTATION),
        "model_name": annotations.get(MODEL_NAME_ANNOTATION, status.name),
    }


def infer(url: str, model: str, inputs: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    """One OIP v2 REST inference through ``url`` (or ``$SHIPYARD_KSERVE_INGRESS`` with ``url``'s host as Host).

    Returns ``{"predictions": list}`` for one output, ``{"predictions": {name: list}}`` for several.
    Raises PluginError naming what the service or the input got wrong.
    """
    import urllib.parse

    import requests

    ingress = os.environ.get(INGRESS_ENV)
    headers = {}
    base = url.rstrip("/")
    if ingress:
        headers["Host"] = urllib.parse.urlsplit(url).netloc
        base = ingress.rstrip("/")
    session = requests.Session()

    def call(method: str, path: str, body: Any = None) -> Any:
        try:
            answer = session.request(method, f"{base}{path}", json=body, headers=headers, timeout=timeout_s)
        except requests.RequestException as exc:
            where = f"{base} (Host {headers['Host']})" if headers else base
            raise PluginError(f"cannot reach the InferenceService at {where}: {exc}; outside the cluster set "
                              f"{INGRESS_ENV}=http://INGRESS_HOST:PORT") from None  # fmt: skip
        if answer.status_code != 200:
            try:
                reason = answer.json().get("error", answer.text)
            except ValueError:
                reason = answer.text
            raise PluginError(f"{method} {path}: the service answered {answer.status_code}: {' '.join(reason.split())}")
        return answer.json()

    meta = call("GET", f"/v2/models/{model}")
    feeds = _as_feeds(inputs, [i["name"] for i in meta["inputs"]])
    tensors = []
    for spec in meta["inputs"]:
        try:
            array = np.asarray(feeds[spec["name"]], dtype=_DTYPES.get(spec["datatype"], "object"))
        except (ValueError, TypeError) as exc:
            raise PluginError(f"input {spec['name']!r}: cannot be read as {spec['datatype']} ({exc})") from None
        data = [str(v) for v in array.ravel()] if spec["datatype"] == "BYTES" else array.ravel().tolist()
        tensors.append({"name": spec["name"], "shape": list(array.shape), "datatype": spec["datatype"], "data": data})
    answer = call("POST", f"/v2/models/{model}/infer", {"inputs": tensors})
    outputs = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]).tolist() for o in answer["outputs"]}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    return {"predictions": outputs}
