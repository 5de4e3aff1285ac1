"""notebooks/quickstart.ipynb executes end to end (nbclient) and shows a served model that matches torch.

The notebook trains the digits CNN, runs deploy_flow (MLflow on sqlite, ONNX Runtime INT8, validation,
publish), starts the runtime with the local deploy target, queries it with tritonclient (HTTP and gRPC),
reads /metrics and stops the server. Its working directory is the test's tmp_path, so the repository is not
touched. The kernel runs this interpreter (a kernelspec written into a temporary JUPYTER_PATH).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import TEST_KERNEL_NAME, stop_local_runtimes, write_test_kernelspec

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
EXECUTION_TIMEOUT_S = 540  # the whole notebook; one cell may not take longer than CELL_TIMEOUT_S
CELL_TIMEOUT_S = 300


def _stream_text(cell: dict) -> str:  # type: ignore[type-arg]
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"clear the outputs of: {cell.source[:60]!r}"


@pytest.mark.slow
@pytest.mark.timeout(EXECUTION_TIMEOUT_S + 60)
def test_quickstart_notebook_executes_and_serves_what_torch_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(write_test_kernelspec(tmp_path / "jupyter")))
    work = tmp_path / "work"
    monkeypatch.setenv("SHIPYARD_QUICKSTART_DIR", str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")

    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(TEST_KERNEL_NAME).argv[0] == sys.executable  # this venv's python

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=TEST_KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        stop_local_runtimes(work / "deployments")

    by_tag = {tag: cell for cell in nb.cells for tag in cell.metadata.get("tags", [])}
    summary = json.loads(_stream_text(by_tag["summary"]))
    assert summary["model_uri"] == "models:/digits/1" and summary["alias"] == "models:/digits/1"
    assert summary["validation_passed"] is True and summary["published_version"] == 1
    assert summary["served_accuracy"] >= 0.95, summary
    assert summary["served_torch_agreement"] >= 0.97, summary  # INT8 vs FP32 torch, top-1
    assert summary["grpc_matches_http"] is True
    # 360 held-out images over HTTP + 8 over gRPC, batched into fewer executions than images
    assert summary["nv_inference_count"] == 368
    assert 0 < summary["nv_inference_exec_count"] <= 368

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the profile plot was not displayed"
    metrics_text = "".join(_stream_text(c) for c in nb.cells if "nv_inference_exec_count" in c.source)
    assert 'nv_inference_count{model="digits",version="1"}' in metrics_text

    # the notebook stopped its server and wrote only under its working directory
    assert not (work / "deployments" / "digits.json").exists()
    assert (work / "mlflow" / "mlflow.db").is_file()
    assert (work / "model-repository" / "digits" / "1" / "model.onnx").is_file()
