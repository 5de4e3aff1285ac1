"""The deploy pipeline end to end on the embedded default: KFP local runner, sqlite MLflow, a local runtime.

Real parts throughout: MLflow registry, torch -> ONNX export, ONNX Runtime optimization, the validation
gate on the digits held-out data, an atomic publish, the runtime as a process, tritonclient queries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from helpers import free_port

import shipyard.registry as registry
from shipyard.components.deploy import LocalTarget
from shipyard.pipelines.definitions import make_deploy_pipeline
from shipyard.pipelines.pipeline_cli import run_local
from shipyard.zoo import digits_data, torch_model

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_deploy_pipeline_serves_the_registered_model(tmp_path: Path, tracking_uri: str) -> None:
    data = digits_data()
    heldout = tmp_path / "heldout.npz"
    np.savez(heldout, input=data.x_test[:128], labels=data.y_test[:128])
    reg = registry.register_module(torch_model("digits_cnn"), data.x_test[:2], "digits", tracking_uri=tracking_uri)
    state = tmp_path / "state"
    repo = tmp_path / "repo"
    http_port = free_port()
    try:
        url = run_local(
            make_deploy_pipeline(),
            {
                "model_uri": reg.uri, "repository": str(repo), "model_name": "digits", "tracking_uri": tracking_uri,
                "deployment_name": "digits", "target": "local", "data_path": str(heldout), "max_batch_size": 32,
                "http_port": http_port, "grpc_port": free_port(), "state_dir": str(state),
            },
            tmp_path / "kfp",
        )  # fmt: skip
        assert url == f"http://127.0.0.1:{http_port}"
        # the served model classifies held-out digits as well as the original
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        tensor = httpclient.InferInput("input", [32, 1, 8, 8], "FP32")  # max_batch_size 32
        tensor.set_data_from_numpy(data.x_test[128:160])
        logits = client.infer("digits", [tensor]).as_numpy(client.get_model_metadata("digits")["outputs"][0]["name"])
        assert logits is not None
        accuracy = float(np.mean(np.argmax(logits, axis=1) == data.y_test[128:160]))
        assert accuracy > 0.9
        assert client.get_model_metadata("digits")["versions"] == ["1"]
    finally:
        local = LocalTarget(state)
        for name in local.names():
            local.stop(name)
    assert (repo / "digits" / "1").is_dir() and (repo / "digits" / "config.pbtxt").is_file()
    tags = registry.get_lineage(reg.uri, tracking_uri)
    assert tags["shipyard.validation.passed"] == "true"
    assert tags["shipyard.engine.target"] == "onnxruntime"
    assert tags["shipyard.published.version"] == "1"
    assert tags["shipyard.onnx.sha256"] and tags["shipyard.batching"]
    [report] = [p for p in (tmp_path / "kfp").rglob("report") if p.is_file()]  # the validate step's Markdown
    assert "passed" in report.read_text().lower()
