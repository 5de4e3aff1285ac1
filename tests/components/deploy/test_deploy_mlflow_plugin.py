"""The MLflow deployments plugin, target ``shipyard`` (local): found through MLflow's entry point, then
create -> predict -> get/list -> update -> delete against real MLflow (sqlite) and a real runtime process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

import shipyard.registry as registry
from shipyard.zoo import digits_data, torch_model

pytestmark = pytest.mark.slow


@pytest.fixture
def tracking_uri(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared embedded store (tests/conftest.py), plus a private ``$SHIPYARD_HOME`` for the deployments."""
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    return tracking_uri


@pytest.mark.timeout(240)
def test_create_predict_update_delete(tmp_path: Path, tracking_uri: str) -> None:
    data = digits_data()
    heldout = tmp_path / "heldout.npz"
    np.savez(heldout, input=data.x_test[:128], labels=data.y_test[:128])
    reg = registry.register_module(torch_model("digits_cnn"), data.x_test[:2], "digits", tracking_uri=tracking_uri)
    client = get_deploy_client("shipyard")
    http_port = free_port()
    config = {"data_path": str(heldout), "http_port": str(http_port), "grpc_port": str(free_port()),
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


def test_an_unknown_target_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(MlflowException, match=r"not a shipyard target: use 'shipyard'.*'shipyard:/kserve/NAMESPACE'"):
        get_deploy_client("shipyard:/kfserving")
