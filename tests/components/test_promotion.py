"""Issue 17: a real ``mlflow server`` (sqlite) sends real, signed webhooks to a real ``shipyard promotion`` process;
setting ``@champion`` with MlflowClient deploys the version on the local target (canary, watch, full traffic)
while a client keeps inferring; a broken version is rolled back with the reason tagged; forged, unsigned and
replayed deliveries are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import free_port

from shipyard.components.promotion.rollout import Settings, judge
from shipyard.components.promotion.webhooks import sign

SECRET = "s3cret-for-tests"


def _wait(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """mlflow server (webhooks to loopback allowed, no webhook cache) + shipyard promotion serve."""
    root = tmp_path_factory.mktemp("promotion")
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 4:  # four distinct free ports
        ports = {k: free_port() for k in ("mlflow", "promotion", "http", "grpc")}
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "SHIPYARD_WEBHOOK_SECRET": SECRET, "SHIPYARD_HOME": str(root / "home")}
    mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
    procs = [_start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]),
                     "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
                     str(root / "artifacts"), "--workers", "1"], root / "mlflow.log", env, root)]  # fmt: skip
    promotion_url = f"http://127.0.0.1:{ports['promotion']}"
    procs.append(_start([sys.executable, "-m", "shipyard", "promotion", "serve", "--repository", str(root / "repo"),
                         "--tracking-uri", mlflow_url, "--port", str(ports["promotion"]), "--http-port",
                         str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--canary-percent", "30",
                         "--watch-s", "6", "--max-p99-ms", "2000", "--no-profile"],
                        root / "promotion.log", env, root))  # fmt: skip
    try:
        _wait(lambda: _ok(f"{mlflow_url}/health"), 120, "mlflow")
        _wait(lambda: _get_json(f"{promotion_url}/healthz"), 60, "the promotion service")
        yield {"mlflow": mlflow_url, "promotion": promotion_url, "http": f"127.0.0.1:{ports['http']}", "root": root}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        from shipyard.components.deploy.local import LocalTarget

        target = LocalTarget(root / "promotion" / "deployments")
        for name in target.names():
            target.stop(name)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_refuses_unsigned_forged_stale_and_replayed_deliveries(stack: dict[str, Any]) -> None:
    url = f"{stack['promotion']}/webhook"
    body = json.dumps({"entity": "model_version_alias", "action": "deleted", "data": {"name": "x", "alias": "a"}})
    assert _post(url, body.encode(), {}) == 401
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
    headers = {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp}
    assert _post(url, body.encode(), {**headers, "X-MLflow-Signature": sign("wrong", delivery, stamp, body)}) == 401
    old = str(int(time.time()) - 3600)
    stale = {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": old,
             "X-MLflow-Signature": sign(SECRET, delivery, old, body)}  # fmt: skip
    assert _post(url, body.encode(), stale) == 401
    good = {**headers, "X-MLflow-Signature": sign(SECRET, delivery, stamp, body)}
    assert _post(url, body.encode(), good) == 200
    assert _post(url, body.encode(), good) == 409  # the same delivery again: a replay


class _Client(threading.Thread):
    """Infers on the unversioned model all the time; counts answers per model version and failures."""

    def __init__(self, url: str, x: np.ndarray) -> None:
        super().__init__(daemon=True)
        import tritonclient.http as httpclient

        self.client = httpclient.InferenceServerClient(url)
        self.tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        self.tensor.set_data_from_numpy(x)
        self.ok, self.failures, self.stop = 0, [], threading.Event()
        self.versions: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = self.client.infer("digits", [self.tensor]).get_response()
                self.ok += 1
                self.versions[answer["model_version"]] = self.versions.get(answer["model_version"], 0) + 1
            except Exception as exc:
                self.failures.append(str(exc)[:200])
            time.sleep(0.01)


def _breaks_on_real_pixels() -> Any:
    """An ONNX model with the digits CNN's inputs and outputs that looks up a 10-entry table at index
    ``int(pixel * 100)``: the logged example (all zeros) passes export, optimization and validation, while real
    images (pixels up to 1.0) make ONNX Runtime fail with an index out of range."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = {"starts": np.array([0], np.int64), "ends": np.array([10], np.int64), "axes": np.array([1], np.int64),
              "scale": np.array(100.0, np.float32), "table": np.linspace(-1, 1, 10).astype(np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["first10"]),
        helper.make_node("Mul", ["first10", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["logits"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "breaks_on_real_pixels",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _digits(seed: int) -> Any:
    import torch

    from shipyard.zoo import torch_model

    module = torch_model("digits_cnn")  # the zoo seeds its own init: perturb it so each seed is a new model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    return module


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_alias_moves_deploy_canary_then_full_and_a_broken_version_rolls_back(stack: dict[str, Any]) -> None:
    import onnx
    from mlflow import MlflowClient

    from shipyard import registry
    from shipyard.zoo import digits_data

    mlflow_url, status_url = stack["mlflow"], f"{stack['promotion']}/status"
    client = MlflowClient(mlflow_url, registry_uri=mlflow_url)  # not a registry URI set by an earlier test
    client.create_webhook(name="shipyard-promotion", url=f"{stack['promotion']}/webhook", secret=SECRET,
                          events=["model_version.created", "model_version_alias.created"])  # fmt: skip
    time.sleep(1.5)  # the server's webhook list cache (TTL 1 s)
    x = np.asarray(digits_data().x_test[:2])

    def serving() -> int | None:
        state = _get_json(status_url) or {}
        return (state.get("serving") or {}).get("digits", {}).get("version")

    def tag(version: int, key: str) -> str | None:
        return client.get_model_version("digits", str(version)).tags.get(key)

    # v1: the created webhook prepares it (tags), the alias deploys it
    v1 = registry.register_module(_digits(1), x, "digits", tracking_uri=mlflow_url)
    _wait(lambda: tag(v1.version, "shipyard.rollout.status") == "prepared", 240, "v1 prepared")
    assert tag(v1.version, "shipyard.validation.passed") == "true"
    client.set_registered_model_alias("digits", "champion", str(v1.version))
    _wait(lambda: serving() == v1.version, 240, "v1 serving")

    # v2 while a client infers throughout: canary (both versions answer), then 100%, no failed request
    v2 = registry.register_module(_digits(2), x, "digits", tracking_uri=mlflow_url)
    assert v2.created and v2.version == v1.version + 1
    _wait(lambda: tag(v2.version, "shipyard.rollout.status") == "prepared", 240, "v2 prepared")
    load = _Client(stack["http"], x)
    load.start()
    _wait(lambda: load.ok > 5, 30, "the client's first answers")
    started = time.monotonic()
    client.set_registered_model_alias("digits", "champion", str(v2.version))
    _wait(lambda: serving() == v2.version, 120, "v2 serving 100%")
    elapsed = time.monotonic() - started
    seen_during_canary = dict(load.versions)
    time.sleep(1.0)
    after = dict(load.versions)
    load.stop.set()
    load.join(10)
    print(f"alias set -> 100% traffic: {elapsed:.1f} s; answers per repository version {after}")
    assert load.failures == [], load.failures[:3]
    assert len(seen_during_canary) >= 2, f"no canary split seen: {seen_during_canary}"
    assert elapsed < 60
    assert tag(v2.version, "shipyard.rollout.status") == "serving"
    assert float(tag(v2.version, "shipyard.served.p99_ms") or "nan") <= 2000  # measured through the runtime
    newest = max(after, key=int)
    assert after[newest] > seen_during_canary.get(newest, 0)  # after the rollout the new version takes the traffic

    # the same alias again: nothing is deployed twice
    versions_before = sorted(p.name for p in (stack["root"] / "repo" / "digits").iterdir() if p.name.isdigit())
    client.set_registered_model_alias("digits", "champion", str(v2.version))
    time.sleep(3)
    assert sorted(p.name for p in (stack["root"] / "repo" / "digits").iterdir() if p.name.isdigit()) == versions_before

    # a broken version (an ONNX model with a fixed batch of 1) is refused and the alias goes back
    fixed = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["input"], ["output"])], "fixed",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 4])]))  # fmt: skip
    v3 = registry.register_module(fixed, np.ones((1, 4), np.float32), "digits", tracking_uri=mlflow_url)
    client.set_registered_model_alias("digits", "champion", str(v3.version))
    _wait(lambda: tag(v3.version, "shipyard.rollout.status") == "rolled_back", 120, "v3 rolled back")
    assert "fixed batch dimension" in (tag(v3.version, "shipyard.rollout.reason") or "")
    _wait(lambda: client.get_model_version_by_alias("digits", "champion").version == str(v2.version), 30,
          "the alias back on v2")  # fmt: skip
    assert serving() == v2.version

    # a version that passes every gate but breaks on live traffic: the canary is judged on the runtime's own
    # metrics (nv_inference_request_failure of its repository version) and rolled back during the watch
    v4 = registry.register_module(_breaks_on_real_pixels(), np.zeros((2, 1, 8, 8), np.float32), "digits",
                                  tracking_uri=mlflow_url)  # fmt: skip
    _wait(lambda: tag(v4.version, "shipyard.rollout.status") == "prepared", 240, "v4 prepared (its gates pass)")
    load = _Client(stack["http"], x)
    load.start()
    _wait(lambda: load.ok > 5, 30, "the client's first answers")
    started = time.monotonic()
    client.set_registered_model_alias("digits", "champion", str(v4.version))
    _wait(lambda: tag(v4.version, "shipyard.rollout.status") == "rolled_back", 120, "v4 rolled back")
    rolled_back_s = time.monotonic() - started
    reason = tag(v4.version, "shipyard.rollout.reason") or ""
    assert reason.startswith("canary error rate") and "> 1.0%" in reason, reason
    assert any("out of" in f or "indices" in f for f in load.failures), load.failures[:3]  # the canary's answers
    _wait(lambda: client.get_model_version_by_alias("digits", "champion").version == str(v2.version), 30,
          "the alias back on v2 after the canary")  # fmt: skip
    assert serving() == v2.version
    canary_rv = int(tag(v4.version, "shipyard.rollout.repo_version") or 0)
    http = f"http://{stack['http']}"
    _wait(lambda: not _ok(f"{http}/v2/models/digits/versions/{canary_rv}/ready"), 30, "the canary unloaded")
    failed_before = len(load.failures)
    ok_before = load.ok
    time.sleep(2.0)
    load.stop.set()
    load.join(10)
    print(f"v4 alias set -> rolled back on live errors: {rolled_back_s:.1f} s; reason: {reason}")
    assert len(load.failures) == failed_before and load.ok > ok_before  # the stable version serves everything again
    assert rolled_back_s < 60


def test_canary_verdict_from_metric_snapshots() -> None:
    s = Settings(repository=Path("."), max_error_rate=0.05, max_p99_ms=100, min_canary_requests=5)
    key = ("m", "2")
    before = {key: {"success": 10.0, "failure": 0.0, "buckets": {0.05: 10.0, 0.5: 10.0, float("inf"): 10.0}}}
    fine = {key: {"success": 30.0, "failure": 0.0, "buckets": {0.05: 30.0, 0.5: 30.0, float("inf"): 30.0}}}
    erring = {key: {"success": 20.0, "failure": 3.0, "buckets": {0.05: 20.0, 0.5: 20.0, float("inf"): 20.0}}}
    slow = {key: {"success": 30.0, "failure": 0.0, "buckets": {0.05: 12.0, 0.5: 30.0, float("inf"): 30.0}}}
    assert judge(before, fine, key, s) is None
    assert "error rate" in (judge(before, erring, key, s) or "")
    assert "p99 latency 500 ms" in (judge(before, slow, key, s) or "")
    assert judge(before, before, key, s) is None  # no traffic: no evidence against it


def test_kubernetes_manifest_is_valid_and_its_command_line_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from kubernetes.client import ApiClient
    from typer.testing import CliRunner

    from shipyard.cli import build_app

    app = build_app()

    result = CliRunner().invoke(app, ["promotion", "manifest", "--image", "reg/shipyard:1", "--tracking-uri",
                                      "http://mlflow:5000", "--claim", "models"])  # fmt: skip
    assert result.exit_code == 0, result.output
    deployment, service = yaml.safe_load_all(result.output)
    typed = ApiClient()._ApiClient__deserialize(deployment, "V1Deployment")  # the API's own schema
    container = typed.spec.template.spec.containers[0]
    assert typed.spec.strategy.type == "Recreate" and typed.spec.replicas == 1
    assert container.env[0].value_from.secret_key_ref.name == "shipyard-webhook"
    assert {p["port"] for p in service["spec"]["ports"]} == {8090, 8000, 8001}

    # the container's arguments are a valid `shipyard promotion serve` command line: without the secret it stops
    # with the one-line user error (exit 2), not a usage error
    monkeypatch.delenv("SHIPYARD_WEBHOOK_SECRET", raising=False)
    served = CliRunner().invoke(app, container.args)
    assert served.exit_code == 2 and "SHIPYARD_WEBHOOK_SECRET is empty" in served.output


def test_polling_mode_queues_what_webhooks_would(tmp_path: Path, tracking_uri: str) -> None:
    """Without webhooks (file store, managed MLflow), the poller finds new versions and alias moves itself,
    and queues nothing for what is already prepared and serving."""
    from mlflow import MlflowClient

    from shipyard.components.promotion.rollout import Promoter
    from shipyard.components.promotion.service import Worker
    from shipyard.components.promotion.state import State

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.create_registered_model("other")
    client.set_registered_model_alias("m", "champion", "2")
    state = State(tmp_path / "state.json")
    worker = Worker(Promoter(Settings(repository=tmp_path / "repo", tracking_uri=tracking_uri), state), models=["m"])

    def drain() -> list[Any]:
        jobs = []
        while not worker.jobs.empty():
            jobs.append(worker.jobs.get_nowait())
        return jobs

    worker._poll_once()
    assert sorted(drain()) == [("prepare", "m", 1), ("prepare", "m", 2), ("rollout", "m", 2)]
    state.put("prepared", "m/1", {"ok": True})
    state.put("prepared", "m/2", {"ok": True})
    state.put("serving", "m", {"version": 2, "repo_version": 1})
    worker._poll_once()
    assert drain() == []  # nothing new: a restart or a second poll deploys nothing twice
    client.set_registered_model_alias("m", "champion", "1")
    worker._poll_once()
    assert drain() == [("rollout", "m", 1)]
    # and the webhook path queues the same work for the same events
    assert worker.handle({"entity": "model_version_alias", "action": "created",
                          "data": {"name": "m", "alias": "champion", "version": "1"}}) == "rollout m/1"  # fmt: skip
    assert worker.handle({"entity": "model_version_alias", "action": "created",
                          "data": {"name": "m", "alias": "staging", "version": "1"}}) == "ignored"  # fmt: skip
    assert worker.handle({"entity": "model_version", "action": "created",
                          "data": {"name": "other", "version": "1"}}) == "ignored"  # fmt: skip


def test_promote_gate_on_the_served_p99() -> None:
    from shipyard.registry import Gate
    from shipyard.registry.promote import gate_reasons

    passed = {"shipyard.validation.passed": "true"}
    gate = Gate(max_served_p99_ms=50.0)
    assert "not measured" in gate_reasons(passed, gate)[0]
    assert gate_reasons({**passed, "shipyard.served.p99_ms": "25.0"}, gate) == []
    assert "served p99 80.0 ms > 50 ms" in gate_reasons({**passed, "shipyard.served.p99_ms": "80"}, gate)[0]
    assert gate_reasons(passed, Gate()) == []  # not asked for: not gated


def test_scrape_reads_the_runtimes_metric_names(tmp_path: Path) -> None:
    """The runtime's own /metrics text (Triton's untyped counters + our histogram) as the watch reads it."""
    import http.server

    from shipyard.components.promotion.rollout import scrape, served_p99_ms

    text = (
        b'# TYPE nv_inference_request_success untyped\nnv_inference_request_success{model="m",version="2"} 40.0\n'
        b'# TYPE nv_inference_request_failure untyped\n'
        b'nv_inference_request_failure{model="m",reason="BACKEND",version="2"} 2.0\n'
        b"# TYPE shipyard_inference_request_duration_seconds histogram\n"
        b'shipyard_inference_request_duration_seconds_bucket{le="0.01",model="m",version="2"} 30.0\n'
        b'shipyard_inference_request_duration_seconds_bucket{le="0.1",model="m",version="2"} 40.0\n'
        b'shipyard_inference_request_duration_seconds_bucket{le="+Inf",model="m",version="2"} 40.0\n'
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    got = scrape(f"http://127.0.0.1:{server.server_address[1]}")
    server.server_close()
    assert got[("m", "2")]["success"] == 40.0 and got[("m", "2")]["failure"] == 2.0
    assert served_p99_ms({}, got, ("m", "2")) == 100.0
    settings = Settings(repository=tmp_path, max_error_rate=0.01)
    assert "error rate 4.8%" in (judge({}, got, ("m", "2"), settings) or "")


def test_state_survives_a_restart_so_replays_and_rollouts_are_not_repeated(tmp_path: Path) -> None:
    from shipyard.components.promotion.state import State

    first = State(tmp_path / "state.json")
    assert first.accept_delivery("d-1", time.time())
    first.put("rollout", "m", {"version": 3, "repo_version": 4, "stable": 3})
    first.put("serving", "m", {"version": 2, "repo_version": 3})
    again = State(tmp_path / "state.json")  # a restarted service
    assert not again.accept_delivery("d-1", time.time())  # the replay is still refused
    assert again.get("rollout", "m")["repo_version"] == 4  # resume() continues this one; nothing is republished
    assert again.snapshot()["serving"] == {"m": {"version": 2, "repo_version": 3}}
    assert not (tmp_path / "state.json.tmp").exists()  # written atomically


def _scaled_onnx(factor: float) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "factor"], ["output"])], "scaled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.full(4, factor, np.float32), "factor")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_model_is_served_by_the_runtime_already_serving_the_repository(
    tmp_path: Path, tracking_uri: str
) -> None:
    """One runtime serves the whole repository: rolling out model B while model A serves must not start a second
    runtime on the same ports (it failed with 'port in use' before)."""
    from shipyard import registry
    from shipyard.components.deploy.local import LocalTarget
    from shipyard.components.promotion.rollout import Promoter
    from shipyard.components.promotion.state import State

    example = np.ones((2, 4), np.float32)
    for name, factor in (("double", 2.0), ("triple", 3.0)):
        registry.register_module(_scaled_onnx(factor), example, name, tracking_uri=tracking_uri)
    settings = Settings(repository=(tmp_path / "repo").resolve(), tracking_uri=tracking_uri, http_port=free_port(),
                        grpc_port=free_port(), profile=False, work_dir=tmp_path / "work")  # fmt: skip
    promoter = Promoter(settings, State(tmp_path / "work" / "state.json"))
    target = LocalTarget(tmp_path / "work" / "deployments")
    try:
        assert promoter.roll_out("double", 1).startswith("double/1 serves 100%")
        assert promoter.roll_out("triple", 1).startswith("triple/1 serves 100%")
        assert [d.name for d in target.list()] == ["double"]  # one runtime
        http = f"http://127.0.0.1:{settings.http_port}"
        for name, factor in (("double", 2.0), ("triple", 3.0)):
            body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]})
            request = urllib.request.Request(f"{http}/v2/models/{name}/infer", data=body.encode(),
                                             headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert json.loads(resp.read())["outputs"][0]["data"] == [factor] * 4
    finally:
        for name in target.names():
            target.stop(name)
