"""The MLflow deployments plugin's KServe target (``shipyard:/kserve/NAMESPACE``) against the recorded Kubernetes API.

No cluster runs here: ``tests/replay.py`` plays back kube-apiserver exchanges (the recorded bodies of
``data/k8s_conversation.json``, extended into later states of the same InferenceService: a canary split, a
promotion) through a real kubeconfig and the real kubernetes client; every manifest the plugin sends is checked
against KServe's CRD schemas and against what ``shipyard deploy --target kserve --dry-run`` renders for the same
settings. ``predict`` goes through the service URL to a real runtime process on loopback (standing in for the
ingress gateway, as ``SHIPYARD_KSERVE_INGRESS`` names it). The ``mlflow deployments`` CLI is the real one.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import free_port
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from replay import ReplayServer

from shipyard.components.deploy import LocalTarget
from shipyard.zoo import onnx_model

pytestmark = pytest.mark.kserve_sdk

RECORDED = json.loads((Path(__file__).parent / "data" / "k8s_conversation.json").read_text())
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices"
RUNTIME_PATH = "/apis/serving.kserve.io/v1alpha1/namespaces/ml/servingruntimes"
HOST = "digits.ml.example.com"
STORE = "s3://models/digits/repo-v1"


def _exchange(method: str, path: str, status: int, body: Any) -> dict[str, Any]:
    return {"method": method, "path": path, "status": status, "body": body}


def _not_found() -> dict[str, Any]:
    return _exchange("GET", f"{ISVC_PATH}/digits", 404, RECORDED["delete"][1]["body"])


def _service(spec: dict[str, Any], generation: int, traffic: list[tuple[str, int]], ready: bool = True) -> Any:
    """The recorded Ready InferenceService at ``generation`` with ``spec`` and the predictor's traffic split."""
    body = copy.deepcopy(RECORDED["first_deploy"][-1]["body"])
    body["metadata"]["generation"] = generation
    body["metadata"]["annotations"] = spec["metadata"].get("annotations", {})
    body["metadata"]["labels"] = spec["metadata"].get("labels", {})
    body["spec"] = spec["spec"]
    body["status"]["observedGeneration"] = generation
    body["status"]["url"] = f"http://{HOST}"
    body["status"]["conditions"][-1]["status"] = "True" if ready else "False"
    body["status"]["components"]["predictor"]["traffic"] = [
        {"revisionName": f"digits-predictor-0000{n}", "percent": p, "latestRevision": i == len(traffic) - 1}
        for i, (n, p) in enumerate(traffic)
    ]
    return body


def _get(body: Any) -> dict[str, Any]:
    return _exchange("GET", f"{ISVC_PATH}/digits", 200, body)


def _create_conversation(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """create: not there yet -> runtime + service created (the recorded first deploy) -> Ready -> get."""
    return [_not_found(), *RECORDED["first_deploy"], _get(_service(spec, 1, [("1", 100)]))]


def _update_conversation(spec: dict[str, Any], patched: dict[str, Any], traffic: list[tuple[str, int]]) -> list[Any]:
    """update: read the service -> merge patch (generation 2) -> Ready at generation 2 with ``traffic`` -> get."""
    after = _service(patched, 2, traffic)
    stored = copy.deepcopy(after)
    stored["status"]["observedGeneration"] = 1
    return [_get(_service(spec, 1, [("1", 100)])), _exchange("PATCH", f"{ISVC_PATH}/digits", 200, stored),
            _get(after), _get(after)]  # fmt: skip


def _dry_run(*args: str) -> list[dict[str, Any]]:
    """What ``shipyard deploy --target kserve --dry-run`` renders (the CLI the plugin must agree with)."""
    out = subprocess.run([sys.executable, "-m", "shipyard", "deploy", *args, "--target", "kserve", "--dry-run"],
                         capture_output=True, text=True, check=True, timeout=120).stdout  # fmt: skip
    return list(yaml.safe_load_all(out))


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server does with the plugin's PATCH)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real runtime serving model ``digits`` (the add_sub ONNX model: INPUT0, INPUT1 -> OUTPUT0 = a+b, OUTPUT1)."""
    root = tmp_path_factory.mktemp("kserve-plugin")
    (root / "repo" / "digits" / "1").mkdir(parents=True)
    (root / "repo" / "digits" / "1" / "model.onnx").write_bytes(onnx_model("add_sub").read_bytes())
    target = LocalTarget(root / "state")
    deployment = target.start("digits", root / "repo", http_port=free_port(), grpc_port=free_port(), timeout_s=120)
    try:
        yield deployment.http_url
    finally:
        target.stop("digits")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str) -> Callable[[list[Any]], ReplayServer]:
    """Start a replay of ``exchanges`` behind a kubeconfig ($KUBECONFIG); the ingress is the real runtime."""
    servers: list[ReplayServer] = []

    def start(exchanges: list[Any]) -> ReplayServer:
        server = ReplayServer(exchanges).__enter__()
        servers.append(server)
        kubeconfig = tmp_path / f"kubeconfig-{len(servers)}"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "replay", "cluster": {"server": server.url}}],
            "users": [{"name": "tester", "user": {"token": "replay-token"}}],
            "contexts": [{"name": "replay", "context": {"cluster": "replay", "user": "tester", "namespace": "ml"}}],
            "current-context": "replay",
        }))  # fmt: skip
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        return server

    monkeypatch.setenv("SHIPYARD_KSERVE_POLL_S", "0.01")
    monkeypatch.setenv("SHIPYARD_KSERVE_INGRESS", runtime)
    yield start  # type: ignore[misc]
    for server in servers:
        server.__exit__(None, None, None)


def _posted(server: ReplayServer, kind_path: str) -> dict[str, Any]:
    [body] = [r["body"] for r in server.requests if r["method"] == "POST" and r["path"] == kind_path]
    return body  # type: ignore[no-any-return]


def _without_lineage(isvc: dict[str, Any]) -> dict[str, Any]:
    trimmed = copy.deepcopy(isvc)
    trimmed["metadata"]["annotations"].pop("shipyard.io/model-uri")
    return trimmed


def test_python_api_create_get_list_predict_canary_promote_delete(
    cluster: Callable[[list[Any]], ReplayServer], crd_validate: Callable[[dict[str, Any]], None]
) -> None:
    expected_runtime, expected_isvc = _dry_run(STORE, "--name", "digits", "--namespace", "ml", "--max-replicas", "2")
    client = get_deploy_client("shipyard:/kserve")  # the namespace comes from the kubeconfig context

    server = cluster(_create_conversation(expected_isvc))
    created = client.create_deployment("digits", STORE, config={"max_replicas": "2"})
    assert not server.mismatches and server.done, server.mismatches
    runtime_body, isvc_body = _posted(server, RUNTIME_PATH), _posted(server, ISVC_PATH)
    crd_validate(runtime_body)
    crd_validate(isvc_body)
    assert runtime_body == expected_runtime  # the same ServingRuntime as `shipyard deploy --target kserve`
    assert _without_lineage(isvc_body) == expected_isvc  # ... and the same InferenceService, plus its model URI
    assert isvc_body["metadata"]["annotations"]["shipyard.io/model-uri"] == STORE
    assert server.requests[0]["authorization"] == "Bearer replay-token"
    assert created["ready"] and created["url"] == f"http://{HOST}" and created["namespace"] == "ml"
    assert created["traffic"] == [{"revision": "digits-predictor-00001", "percent": 100, "latest": True}]

    # predict goes through the service URL (here the ingress named by SHIPYARD_KSERVE_INGRESS) over OIP v2
    server = cluster([_get(_service(isvc_body, 1, [("1", 100)]))] * 2)
    a, b = np.arange(32, dtype=np.float32).reshape(2, 16), np.ones((2, 16), dtype=np.float32)
    answer = client.predict("digits", {"INPUT0": a.tolist(), "INPUT1": b.tolist()})["predictions"]
    np.testing.assert_array_equal(np.asarray(answer["OUTPUT0"]), a + b)
    np.testing.assert_array_equal(np.asarray(answer["OUTPUT1"]), a - b)
    with pytest.raises(MlflowException, match=r"inputs lack \['INPUT1'\]: the model takes \['INPUT0', 'INPUT1'\]"):
        client.predict("digits", {"INPUT0": a.tolist()})

    # update rolls the new model out as a canary: only storageUri and canaryTrafficPercent change
    canary = _merge(isvc_body, {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": "s3://m/v2"}}}})
    server = cluster(_update_conversation(isvc_body, canary, [("1", 90), ("2", 10)]))
    updated = client.update_deployment("digits", "s3://m/v2")
    assert not server.mismatches and server.done, server.mismatches
    [patch] = [r["body"] for r in server.requests if r["method"] == "PATCH"]
    assert patch == {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": "s3://m/v2"}}},
                     "metadata": {"annotations": {"shipyard.io/model-uri": "s3://m/v2"}}}  # fmt: skip
    crd_validate(_merge(isvc_body, patch))
    assert updated["traffic"] == [
        {"revision": "digits-predictor-00001", "percent": 90, "latest": False},
        {"revision": "digits-predictor-00002", "percent": 10, "latest": True},
    ]
    assert updated["canary_percent"] == 10 and updated["storage_uri"] == "s3://m/v2"

    # canary_percent=100 promotes: the canary setting is removed, all traffic goes to the new revision
    full = _merge(canary, {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    server = cluster(_update_conversation(canary, full, [("2", 100)]))
    promoted = client.update_deployment("digits", config={"canary_percent": "100"})
    assert not server.mismatches and server.done, server.mismatches
    assert [r["body"] for r in server.requests if r["method"] == "PATCH"] == [
        {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    ]
    assert promoted["canary_percent"] is None and promoted["traffic"][0]["percent"] == 100

    listing = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServiceList", "metadata": {},
               "items": [_service(canary, 2, [("2", 100)])]}  # fmt: skip
    server = cluster([_exchange("GET", ISVC_PATH, 200, listing), *RECORDED["delete"]])
    assert [(d["name"], d["storage_uri"]) for d in client.list_deployments()] == [("digits", "s3://m/v2")]
    assert "labelSelector=app.kubernetes.io%2Fname%3Dshipyard" in server.requests[0]["query"]
    client.delete_deployment("digits")
    client.delete_deployment("digits")  # idempotent, as MLflow asks: the second delete finds nothing
    assert not server.mismatches and server.done, server.mismatches


def test_errors_are_one_clear_line(
    cluster: Callable[[list[Any]], ReplayServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = get_deploy_client("shipyard:/kserve/ml")
    spec = _service({"metadata": {}, "spec": {"predictor": {}}}, 1, [("1", 100)])
    server = cluster([_get(spec), _not_found(), _not_found()])
    with pytest.raises(MlflowException, match=r"InferenceService ml/digits exists: `mlflow deployments update"):
        client.create_deployment("digits", STORE)
    with pytest.raises(MlflowException, match=r"no InferenceService 'digits' in namespace 'ml'"):
        client.get_deployment("digits")
    with pytest.raises(MlflowException, match=r"no InferenceService 'digits' in namespace 'ml'"):
        client.update_deployment("digits", "s3://m/v2")
    assert server.done and not server.mismatches
    # refused before any request
    with pytest.raises(MlflowException, match=r"pass -C storage_uri=s3://BUCKET/PREFIX"):
        client.create_deployment("digits", "models:/digits/1")
    with pytest.raises(MlflowException, match=r"does not take \['cpu'\].*delete and create to change settings"):
        client.update_deployment("digits", "s3://m/v2", config={"cpu": "2"})
    with pytest.raises(MlflowException, match=r"canary_percent 150 must be within 0..100"):
        client.update_deployment("digits", config={"canary_percent": "150"})
    with pytest.raises(MlflowException, match=r"not a shipyard target: use 'shipyard'"):
        get_deploy_client("shipyard:/kfserving")
    with pytest.raises(MlflowException, match=r"target shipyard:/kserve/Bad_NS: namespace 'Bad_NS' is not a valid"):
        get_deploy_client("shipyard:/kserve/Bad_NS")
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(MlflowException, match=r"^no Kubernetes cluster configured for -t shipyard:/kserve: set KUBE"):
        client.list_deployments()


def _mlflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow", "deployments", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=180, check=False)  # fmt: skip


def test_mlflow_cli_create_predict_canary(
    cluster: Callable[[list[Any]], ReplayServer], tmp_path: Path, crd_validate: Callable[[dict[str, Any]], None]
) -> None:
    """The real `mlflow deployments` CLI finds the plugin through its entry point and drives the KServe target."""
    expected_runtime, expected_isvc = _dry_run(STORE, "--name", "digits", "--namespace", "ml", "--cpu", "2")
    served = _service(expected_isvc, 1, [("1", 100)])
    server = cluster([*_create_conversation(expected_isvc), _get(served), _get(served)])
    created = _mlflow("create", "-t", "shipyard:/kserve/ml", "--name", "digits", "-m", STORE, "-C", "cpu=2")
    assert created.returncode == 0, created.stderr[-2000:]
    assert _posted(server, RUNTIME_PATH) == expected_runtime
    assert _without_lineage(_posted(server, ISVC_PATH)) == expected_isvc
    crd_validate(_posted(server, ISVC_PATH))

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"INPUT0": [[1.0] * 16], "INPUT1": [[2.0] * 16]}))
    out = tmp_path / "out.json"
    predicted = _mlflow("predict", "-t", "shipyard:/kserve/ml", "--name", "digits", "-I", str(rows), "-O", str(out))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(out.read_text())["predictions"]["OUTPUT0"] == [[3.0] * 16]

    got = _mlflow("get", "-t", "shipyard:/kserve/ml", "--name", "digits")
    assert got.returncode == 0 and "http://digits.ml.example.com" in got.stdout, got.stderr[-2000:]
    assert not server.mismatches and server.done, server.mismatches

    canary = _merge(served, {"spec": {"predictor": {"canaryTrafficPercent": 25, "model": {"storageUri": "s3://m/v2"}}}})
    server = cluster(_update_conversation(expected_isvc, canary, [("1", 75), ("2", 25)]))
    target = ("-t", "shipyard:/kserve/ml", "--name", "digits")
    updated = _mlflow("update", *target, "-m", "s3://m/v2", "-C", "canary_percent=25")
    assert updated.returncode == 0, updated.stderr[-2000:]
    [patch] = [r["body"] for r in server.requests if r["method"] == "PATCH"]
    assert patch["spec"]["predictor"] == {"canaryTrafficPercent": 25, "model": {"storageUri": "s3://m/v2"}}

    refused = _mlflow("update", "-t", "shipyard:/kserve/ml", "--name", "digits", "-C", "canary_percent=x")
    assert refused.returncode == 2
    [line] = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert "config: invalid literal for int()" in line and "give numbers for" in line


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_registry_model_is_published_to_the_store_and_served_from_there(
    cluster: Callable[[list[Any]], ReplayServer], tmp_path: Path, tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch, crd_validate: Callable[[dict[str, Any]], None],
) -> None:  # fmt: skip
    """-m models:/... -C storage_uri=s3://...: optimized, validated and published to a real S3 emulator (moto), a
    repository of its own per model version, which the InferenceService names and a runtime serves from the store."""
    import onnx
    from object_stores import start_s3

    from shipyard import registry

    store = start_s3(tmp_path)
    try:
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)
        store.make_bucket("models")
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Mul", ["input", "two"], ["output"])], "double",
            [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 4])],
            [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 4])],
            initializer=[onnx.numpy_helper.from_array(np.full(4, 2.0, np.float32), "two")],
        )  # fmt: skip
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        reg = registry.register_module(model, np.ones((2, 4), np.float32), "doubler", tracking_uri=tracking_uri)

        expected = "s3://models/repos/digits/doubler-v1"
        placeholder = {"metadata": {}, "spec": {"predictor": {"model": {"storageUri": expected}}}}
        server = cluster(_create_conversation(placeholder))
        client = get_deploy_client("shipyard:/kserve/ml")
        created = client.create_deployment("digits", reg.uri,
                                           config={"storage_uri": "s3://models/repos", "tracking_uri": tracking_uri})
        assert not server.mismatches and server.done, server.mismatches
        isvc = _posted(server, ISVC_PATH)
        crd_validate(isvc)
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == expected == created["storage_uri"]
        assert isvc["metadata"]["annotations"]["shipyard.io/model-uri"] == reg.uri
        fs = store.fs()
        assert fs.exists("models/repos/digits/doubler-v1/digits/1/model.onnx")  # type: ignore[attr-defined]

        # what KServe would run: the runtime on that storage URI; predict reaches it through the "ingress"
        target = LocalTarget(tmp_path / "state")
        served = target.start("from-store", expected, http_port=free_port(), grpc_port=free_port(), timeout_s=120)
        try:
            monkeypatch.setenv("SHIPYARD_KSERVE_INGRESS", served.http_url)
            cluster([_get(_service(placeholder, 1, [("1", 100)]))])
            rows = np.arange(8, dtype=np.float32).reshape(2, 4)
            np.testing.assert_array_equal(np.asarray(client.predict("digits", rows)["predictions"]), rows * 2)
        finally:
            target.stop("from-store")
    finally:
        store.stop()
