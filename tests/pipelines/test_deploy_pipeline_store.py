"""The deploy pipeline publishing into S3 (moto in server mode) and the runtime serving from S3.

The same run as test_deploy_pipeline_local.py, but the repository is ``s3://`` on a real S3 server on
loopback: the pipeline's publish step writes the version (claim, files, marker last) and the deploy
step's runtime reads the store itself through its cache (serving_runtime/remote.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from helpers import free_port
from object_stores import start_s3

import shipyard.registry as registry
from shipyard.components.deploy import LocalTarget
from shipyard.components.publish import COMPLETE_MARKER, list_versions
from shipyard.pipelines.definitions import make_deploy_pipeline
from shipyard.pipelines.pipeline_cli import run_local
from shipyard.zoo import digits_data, torch_model

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_pipeline_publishes_to_s3_and_the_runtime_serves_from_it(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = start_s3(tmp_path)
    try:
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)  # the pipeline's steps and the runtime it starts inherit them
        monkeypatch.setenv("SHIPYARD_MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
        store.make_bucket("models")
        data = digits_data()
        heldout = tmp_path / "heldout.npz"
        np.savez(heldout, input=data.x_test[:128], labels=data.y_test[:128])
        reg = registry.register_module(torch_model("digits_cnn"), data.x_test[:2], "digits", tracking_uri=tracking_uri)
        state = tmp_path / "state"
        http_port = free_port()
        repository = "s3://models/repository"
        try:
            url = run_local(
                make_deploy_pipeline(),
                {
                    "model_uri": reg.uri, "repository": repository, "model_name": "digits", "deployment_name": "digits",
                    "tracking_uri": tracking_uri, "target": "local", "data_path": str(heldout), "max_batch_size": 32,
                    "http_port": http_port, "grpc_port": free_port(), "state_dir": str(state),
                },
                tmp_path / "kfp",
            )  # fmt: skip
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            tensor = httpclient.InferInput("input", [32, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(data.x_test[128:160])
            output = client.get_model_metadata("digits")["outputs"][0]["name"]
            logits = client.infer("digits", [tensor]).as_numpy(output)
            assert logits is not None
            assert float(np.mean(np.argmax(logits, axis=1) == data.y_test[128:160])) > 0.9
        finally:
            local = LocalTarget(state)
            log = "".join(Path(d.log_path).read_text(errors="replace") for d in local.list())
            for name in local.names():
                local.stop(name)
        assert list_versions(repository, "digits") == [1]
        fs: object = store.fs()
        assert fs.exists(f"models/repository/digits/1/{COMPLETE_MARKER}")  # type: ignore[attr-defined]
        assert "s3://models/repository: downloading" in log, log[-2000:]
        assert (tmp_path / "model-cache").is_dir()
        tags = registry.get_lineage(reg.uri, tracking_uri)
        assert tags["shipyard.published.uri"] == "s3://models/repository/digits/1"
    finally:
        store.stop()
