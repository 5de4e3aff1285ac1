"""Apply / patch / wait against a replayed Kubernetes API conversation over real HTTP.

No real cluster runs here. A small HTTP server on loopback plays back the exchanges in
``data/k8s_conversation.json`` (kube-apiserver responses with KServe's InferenceService shapes),
checks that each request is the one expected, and records what the client sent. The code under
test talks to it through a real kubeconfig and the real kubernetes client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.components.deploy import (
    DeployError,
    DeployTimeout,
    InferenceServiceSpec,
    RuntimeSpec,
    deploy_kserve,
    kube,
)

pytestmark = pytest.mark.kserve_sdk

CONVERSATION = json.loads((Path(__file__).parent / "data" / "k8s_conversation.json").read_text())


class ReplayServer:
    """Serve one recorded conversation in order; remember every request."""

    def __init__(self, exchanges: list[dict[str, Any]]) -> None:
        self.exchanges = list(exchanges)
        self.position = 0
        self.requests: list[dict[str, Any]] = []
        self.mismatches: list[str] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                replay.requests.append(
                    {
                        "method": self.command,
                        "path": path,
                        "content_type": self.headers.get("Content-Type"),
                        "authorization": self.headers.get("Authorization"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = replay.next(self.command, path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def next(self, method: str, path: str) -> tuple[int, Any]:
        if self.position >= len(self.exchanges):
            last = self.exchanges[-1] if self.exchanges else {}
            if not last.get("repeat"):
                self.mismatches.append(f"unexpected extra request {method} {path}")
                return 500, {"message": "conversation over"}
            expected = last
        else:
            expected = self.exchanges[self.position]
            self.position += 1
        if (expected["method"], expected["path"]) != (method, path):
            self.mismatches.append(f"expected {expected['method']} {expected['path']}, got {method} {path}")
            return 500, {"message": "unexpected request"}
        return expected["status"], expected["body"]

    @property
    def done(self) -> bool:
        return self.position == len(self.exchanges)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ReplayServer, str]]:
    server = ReplayServer(CONVERSATION[request.param])
    server.thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "replay", "cluster": {"server": server.url}}],
                "users": [{"name": "tester", "user": {"token": "replay-token"}}],
                "contexts": [{"name": "replay", "context": {"cluster": "replay", "user": "tester", "namespace": "ml"}}],
                "current-context": "replay",
            }
        )
    )
    try:
        yield server, str(kubeconfig)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


ISVC = InferenceServiceSpec(name="digits", namespace="ml", storage_uri="s3://models/repo", max_replicas=2)


@pytest.mark.parametrize("cluster", ["first_deploy"], indirect=True)
def test_first_deploy_creates_both_and_waits_for_ready(cluster: tuple[ReplayServer, str]) -> None:
    server, kubeconfig = cluster
    seen: list[bool] = []
    result = deploy_kserve(
        ISVC, RuntimeSpec(), kubeconfig=kubeconfig, timeout_s=30, poll_s=0.01, on_status=lambda s: seen.append(s.ready)
    )
    assert not server.mismatches, server.mismatches
    assert server.done
    assert result.ready and result.url == "http://digits.ml.example.com"
    assert result.internal_url == "http://digits-predictor.ml.svc.cluster.local"
    assert seen == [False, False, True]
    runtime_post, isvc_post = server.requests[0], server.requests[1]
    assert runtime_post["authorization"] == "Bearer replay-token"
    assert runtime_post["body"]["kind"] == "ServingRuntime"
    assert runtime_post["body"]["spec"]["containers"][0]["name"] == "kserve-container"
    assert isvc_post["body"]["spec"]["predictor"]["model"]["storageUri"] == "s3://models/repo"


@pytest.mark.parametrize("cluster", ["redeploy"], indirect=True)
def test_redeploy_patches_and_ignores_a_stale_ready(cluster: tuple[ReplayServer, str]) -> None:
    """409 on create -> merge patch; Ready from the previous generation does not end the wait."""
    server, kubeconfig = cluster
    result = deploy_kserve(ISVC, RuntimeSpec(), kubeconfig=kubeconfig, timeout_s=30, poll_s=0.01)
    assert not server.mismatches, server.mismatches
    assert server.done  # both GETs consumed: the first one still showed observedGeneration 1
    assert result.ready
    patches = [r for r in server.requests if r["method"] == "PATCH"]
    assert [p["content_type"] for p in patches] == ["application/merge-patch+json"] * 2
    predictor = patches[1]["body"]["spec"]["predictor"]
    # settings the new spec leaves out are cleared explicitly (a merge patch would keep them otherwise)
    assert predictor["canaryTrafficPercent"] is None and predictor["autoScaling"] is None
    assert predictor["maxReplicas"] == 2


@pytest.mark.parametrize("cluster", ["invalid"], indirect=True)
def test_api_server_rejection_is_reported_with_its_message(cluster: tuple[ReplayServer, str]) -> None:
    server, kubeconfig = cluster
    with pytest.raises(DeployError, match=r"creating inferenceservices/digits failed: 422 Invalid: .*minReplicas"):
        deploy_kserve(ISVC, kubeconfig=kubeconfig, timeout_s=5)
    assert server.done


@pytest.mark.parametrize("cluster", ["never_ready"], indirect=True)
def test_wait_times_out_with_the_last_reason(cluster: tuple[ReplayServer, str]) -> None:
    server, kubeconfig = cluster
    with pytest.raises(DeployTimeout, match=r"not ready after 0.3 s.*Insufficient nvidia.com/gpu"):
        deploy_kserve(ISVC, kubeconfig=kubeconfig, timeout_s=0.3, poll_s=0.05)
    assert not server.mismatches, server.mismatches
    assert 2 <= sum(r["method"] == "GET" for r in server.requests) <= 10  # bounded polling


@pytest.mark.parametrize("cluster", ["failed_load"], indirect=True)
def test_failed_model_load_stops_the_wait_at_once(cluster: tuple[ReplayServer, str]) -> None:
    server, kubeconfig = cluster
    with pytest.raises(DeployError, match=r"BlockedByFailedLoad.*ModelLoadFailed.*config.pbtxt:3:1"):
        deploy_kserve(ISVC, kubeconfig=kubeconfig, timeout_s=60, poll_s=0.01)
    assert server.done and not server.mismatches


@pytest.mark.parametrize("cluster", ["delete"], indirect=True)
def test_delete_is_idempotent(cluster: tuple[ReplayServer, str]) -> None:
    server, kubeconfig = cluster
    api = kube.api_client(kubeconfig)
    assert kube.delete(api, "digits", "ml") is True
    assert kube.delete(api, "digits", "ml") is False
    assert server.done and not server.mismatches


def test_missing_kubeconfig_names_the_file_and_the_alternative(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="cannot load kubeconfig"):
        kube.api_client(str(tmp_path / "nope"))


_VERBS = {"POST": "create", "PATCH": "patch", "GET": "get", "DELETE": "delete", "PUT": "update"}


@pytest.mark.parametrize("cluster", ["first_deploy", "redeploy"], indirect=True)
def test_rbac_role_grants_exactly_what_the_deploy_step_uses(cluster: tuple[ReplayServer, str]) -> None:
    """serving_runtime/manifests/rbac.yaml's KServe rules == the (resource, verb) pairs the step sends."""
    server, kubeconfig = cluster
    deploy_kserve(ISVC, RuntimeSpec(), kubeconfig=kubeconfig, timeout_s=30, poll_s=0.01)
    assert not server.mismatches and server.done
    used: dict[str, set[str]] = {}
    for request in server.requests:
        resource = request["path"].split("/namespaces/ml/")[1].split("/")[0]
        used.setdefault(resource, set()).add(_VERBS[request["method"]])
    rbac = Path(__file__).resolve().parents[3] / "serving_runtime" / "manifests" / "rbac.yaml"
    [role] = [d for d in yaml.safe_load_all(rbac.read_text()) if d["kind"] == "Role"]
    granted = {r["resources"][0]: set(r["verbs"]) for r in role["rules"] if r["apiGroups"] == ["serving.kserve.io"]}
    if server.requests[0]["method"] == "POST" and len(server.requests) > 1 and server.requests[1]["method"] == "PATCH":
        assert granted == used  # the redeploy conversation uses every verb the role grants
    else:
        assert all(used[r] <= granted[r] for r in used)
