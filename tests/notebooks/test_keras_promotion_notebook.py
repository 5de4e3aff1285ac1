"""notebooks/keras_promotion.ipynb executes end to end (nbclient): a Keras 3 model (torch backend) trained in the
notebook, registered in MLflow, prepared by a real ``shipyard promotion`` process (polling the sqlite registry),
deployed by the ``@champion`` alias move alone, and served by a real runtime with Keras' own answers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import TEST_KERNEL_NAME, stop_local_runtimes, write_test_kernelspec

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
if importlib.util.find_spec("keras") is None:  # not imported here: it would pick a backend for the whole session
    pytest.skip("keras is not installed: pip install 'shipyard[keras]'", allow_module_level=True)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "keras_promotion.ipynb"
CELL_TIMEOUT_S = 240


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        assert not cell.outputs and cell.execution_count is None, f"clear the outputs of: {cell.source[:60]!r}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_keras_notebook_promotes_by_alias_and_serves_what_keras_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(write_test_kernelspec(tmp_path / "jupyter")))
    work = tmp_path / "work"
    monkeypatch.setenv("SHIPYARD_NOTEBOOK_DIR", str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=TEST_KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    try:
        client.execute()
    finally:  # a failed cell midway leaves the runtime running
        stop_local_runtimes(work / "promotion" / "deployments")

    for cell in nb.cells:  # where the time goes (pytest -s shows it)
        timing = cell.metadata.get("execution", {})
        if "shell.execute_reply" in timing:
            from datetime import datetime

            start, end = (
                datetime.fromisoformat(timing[k].rstrip("Z")) for k in ("iopub.execute_input", "shell.execute_reply")
            )
            print(f"{(end - start).total_seconds():6.1f} s  {cell.source.splitlines()[0][:70]}")
    [summary_cell] = [c for c in nb.cells if "summary" in c.metadata.get("tags", [])]
    text = "".join(o.get("text", "") for o in summary_cell.outputs if o.get("output_type") == "stream")
    summary = json.loads(text)
    assert summary["model_version"] == 1 and str(summary["alias"]) == "1"
    assert summary["rollout_status"] == "serving"
    assert summary["max_abs_diff_vs_keras"] <= 1e-4, summary  # FP32 ONNX Runtime vs Keras (torch backend)
    assert summary["served_accuracy"] >= 0.85, summary
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert (work / "model-repository" / "digits-keras" / "1").is_dir()
    assert not (work / "promotion" / "deployments" / "digits-keras.json").exists()  # the notebook stopped it
