"""The MLflow deployments plugin, target ``shipyard`` (local): found through MLflow's entry point, then
create -> predict -> get/list -> update -> delete against real MLflow (sqlite) and a real runtime process."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

import shipyard.registry as registry
from shipyard.zoo import digits_data, torch_model

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHIPYARD_MLFLOW_HOME", str(tmp_path / "mlflow"))
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return registry.resolve_tracking_uri()


@pytest.mark.timeout(240)
def test_create_predict_update_delete(tmp_path: Path, tracking_uri: str) -> None:
    data = digits_data()
    heldout = tmp_path / "heldout.npz"
    np.savez(heldout, input=data.x_test[:128], labels=data.y_test[:128])
    reg = registry.register_module(torch_model("digits_cnn"), data.x_test[:2], "digits", tracking_uri=tracking_uri)
    client = get_deploy_client("shipyard")
    http_port = _free_port()
    config = {"data_path": str(heldout), "http_port": str(http_port), "grpc_port": str(_free_port()),
              "max_batch_size": "16", "tracking_uri": tracking_uri}  # fmt: skip
    try:
        created = client.create_deployment("digits", reg.uri, config=config)
        assert created["url"] == f"http://127.0.0.1:{http_port}" and created["version"] == 1
        with pytest.raises(MlflowException, match="exists and is running"):
            client.create_deployment("digits", reg.uri, config=config)

        batch = data.x_test[128:144]
        predictions = np.asarray(client.predict("digits", batch).get_predictions(predictions_format="ndarray"))
        assert predictions.shape == (16, 10)
        assert np.mean(predictions.argmax(axis=1) == data.y_test[128:144]) > 0.85
        as_dict = client.predict("digits", {"inputs": {"input": batch[:2].tolist()}})
        np.testing.assert_allclose(np.asarray(as_dict["predictions"]), predictions[:2], rtol=1e-4, atol=1e-4)
        with pytest.raises(MlflowException, match=r"inputs lack \['input'\]"):
            client.predict("digits", {"wrong": batch})

        assert client.get_deployment("digits")["running"] is True
        assert [d["name"] for d in client.list_deployments()] == ["digits"]

        updated = client.update_deployment("digits", reg.uri, config=config)  # same model: a new repository version
        assert updated["version"] == 2 and updated["url"] == created["url"]
        assert np.asarray(client.predict("digits", batch[:1])["predictions"]).shape == (1, 10)
    finally:
        for deployment in client.list_deployments():
            client.delete_deployment(deployment["name"])
    assert client.list_deployments() == []
    with pytest.raises(Exception, match="no local deployment named 'digits'"):
        client.get_deployment("digits")


def test_only_the_local_target_is_offered() -> None:
    with pytest.raises(MlflowException, match="only the local target"):
        get_deploy_client("shipyard:/kserve")
