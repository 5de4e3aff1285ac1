"""The scoring pipeline on the KFP local runner: ``models:/digits@champion`` resolved through its publish
lineage, the held-out digits scored in-process from the repository, the output logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

import shipyard.registry as registry
from shipyard.components.export import export_onnx
from shipyard.components.publish import publish
from shipyard.pipelines.pipeline_cli import run_local
from shipyard.pipelines.scoring import make_score_pipeline
from shipyard.zoo import digits_data, torch_model

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_score_pipeline_scores_the_champion_and_logs_to_mlflow(tmp_path: Path, tracking_uri: str) -> None:
    data = digits_data()
    module = torch_model("digits_cnn")
    reg = registry.register_module(module, data.x_test[:2], "digits", tracking_uri=tracking_uri)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(module, np.asarray(data.x_test[:1]), onnx_path, max_batch_size=32, output_names=["logits"])
    published = publish(onnx_path, tmp_path / "repo", "digits", max_batch_size=32, mlflow_model_uri=reg.uri)
    registry.record_lineage(reg.uri, published.lineage_tags(), tracking_uri)
    registry.get_client(tracking_uri).set_registered_model_alias("digits", "champion", str(reg.version))
    rows = 300
    np.savez(tmp_path / "heldout.npz", input=data.x_test[:rows], id=np.arange(rows) + 5000)

    output = run_local(
        make_score_pipeline(),
        {"model_uri": "models:/digits@champion", "tracking_uri": tracking_uri, "key": "id",
         "input_uri": str(tmp_path / "heldout.npz"), "output_uri": str(tmp_path / "scored")},
        tmp_path / "kfp",
    )  # fmt: skip
    assert output == str(tmp_path / "scored")
    table = pads.dataset(output, format="parquet").to_table().sort_by("id")
    assert table.num_rows == rows and table.column("id").to_pylist() == list(range(5000, 5000 + rows))
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False))
    assert float(np.mean(np.argmax(logits, axis=1) == data.y_test[:rows])) > 0.9
    manifest = json.loads((tmp_path / "scored" / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["summary"]["priority"] == 2  # publish wrote 2 levels
    assert manifest["summary"]["model_uri"] == f"models:/digits/{reg.version}"

    client = registry.get_client(tracking_uri)
    experiment = client.get_experiment_by_name("shipyard-scoring")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["rows"] == rows
    assert run.data.tags["shipyard.scoring.output"] == output
    assert run.data.params["model_version"] == "1"
