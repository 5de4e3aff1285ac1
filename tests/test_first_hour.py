"""A user's first hour: every command with each class of bad input ends in ONE line and the right exit code.

Exit codes (README): 2 a user error (missing or corrupt file, wrong shape, unknown URI, unreachable host,
missing extra), 3 a gate that said no, 1 a bug in shipyard (its traceback only with ``--debug``). The
commands run in this process through ``shipyard.cli.main``, the console script's own entry point.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port

from shipyard.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scratch folder of good and bad inputs: a torch.export program, corrupt files, a wrong-shape npz."""
    import torch

    from shipyard.zoo import onnx_model

    root = tmp_path_factory.mktemp("first-hour")
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    example = torch.randn(2, 4)
    np.save(root / "example.npy", example.numpy())
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "tiny.pt2"))
    torch.jit.save(torch.jit.script(module), str(root / "tiny_ts.pt"))
    (root / "corrupt.npy").write_bytes(b"not numpy at all")
    np.save(root / "scalar.npy", np.float32(1.0))
    (root / "corrupt.onnx").write_bytes(b"\x08garbage" * 16)
    (root / "garbage.pt").write_text("print('not a model')\n")
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04broken")
    add_sub = onnx_model("add_sub")
    np.savez(root / "wrong_shape.npz", INPUT0=np.zeros((4, 7), np.float32), INPUT1=np.zeros((4, 7), np.float32))
    return {"root": root, "add_sub": add_sub}


@pytest.fixture(autouse=True)
def scratch_store(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_MLFLOW_HOME", str(files["root"] / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(files["root"])


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# (id, argv with {root}/{add_sub}/{closed} placeholders, exit code, text the one line must contain)
CASES = [
    ("register: missing model file", ["register", "missing.pt", "--name", "m", "--input-example", "example.npy"],
     2, "file not found: missing.pt"),
    ("register: missing example", ["register", "tiny.pt2", "--name", "m", "--input-example", "missing.npy"],
     2, "not found: missing.npy"),
    ("register: corrupt example", ["register", "tiny.pt2", "--name", "m", "--input-example", "corrupt.npy"],
     2, "corrupt.npy is not a readable numpy file"),
    ("register: scalar example", ["register", "tiny.pt2", "--name", "m", "--input-example", "scalar.npy"],
     2, "scalar"),
    ("register: not a model", ["register", "garbage.pt", "--name", "m", "--input-example", "example.npy"],
     2, "garbage.pt is not a model file torch can read"),
    ("register: unknown zoo model", ["register", "zoo:nope", "--name", "m"], 2, "nope"),
    ("export: unknown model version", ["export", "models:/nope/1", "-o", "x.onnx"], 2, "not found in the registry"),
    ("optimize: missing file", ["optimize", "missing.onnx", "-o", "opt"], 2, "not found"),
    ("optimize: corrupt file", ["optimize", "corrupt.onnx", "-o", "opt", "--target", "onnxruntime"], 2, "corrupt"),
    ("validate: wrong shape", ["validate", "{add_sub}", "--reference", "{add_sub}", "--data", "wrong_shape.npz",
                               "--no-profile"], 2, "has shape (4, 7)"),
    ("validate: corrupt data", ["validate", "{add_sub}", "--reference", "{add_sub}", "--data", "corrupt.npz"],
     2, "corrupt.npz is not a readable numpy file"),
    ("validate: missing reference", ["validate", "{add_sub}", "--reference", "nope.onnx", "--data", "wrong_shape.npz"],
     2, "not found"),
    ("publish: missing --batching-from", ["publish", "{add_sub}", "--repository", "{root}/repo", "--name", "a",
                                          "--batching-from", "missing.json"], 2, "file not found: missing.json"),
    ("publish: unknown URI scheme", ["publish", "{add_sub}", "--repository", "nope://bucket/x", "--name", "a"],
     2, "nope"),
    ("pipeline submit: unreachable host", ["pipeline", "submit", "deploy", "--host", "{closed}",
                                           "-p", "model_uri=models:/x/1", "-p", "repository=/r", "-p", "model_name=x"],
     2, "cannot reach 127.0.0.1"),
    ("deploy: missing repository", ["deploy", "{root}/nowhere", "--name", "x", "--target", "local",
                                    "--state-dir", "{root}/state"], 2, "is not a directory"),
    ("deploy: bad name", ["deploy", "{root}", "--name", "Bad_Name", "--target", "local"], 2, "Kubernetes name"),
    ("undeploy: unknown name", ["undeploy", "nope", "--state-dir", "{root}/state"], 2, "no local deployment"),
    ("promote: unknown model version", ["promote", "models:/nope/1"], 2, "not found in the registry"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "code", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code(
    argv: list[str], code: int, text: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    values = {"root": str(files["root"]), "add_sub": str(files["add_sub"]), "closed": _closed_port_url()}
    got, _, err = _run([a.format(**values) for a in argv], capsys)
    assert got == code, err
    _assert_one_error_line(err, text)


def _assert_one_error_line(err: str, text: str) -> None:
    """One ``error:`` line, the last one, holding ``text``; no traceback (progress lines may come before)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err, err
    assert text in errors[0], err


def test_a_missing_extra_names_the_package(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the s3 extra were not installed
    code, _, err = _run(["publish", str(files["add_sub"]), "--repository", "s3://bucket/models", "--name", "a"], capsys)
    assert code == 2, err
    _assert_one_error_line(err, "s3fs")
    assert "not installed" in err


def test_debug_adds_the_traceback(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["--debug", "publish", str(files["add_sub"]), "--repository", str(files["root"] / "repo"),
                         "--name", "a", "--batching-from", "missing.json"], capsys)  # fmt: skip
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: file not found")


def test_an_internal_error_is_exit_1_and_points_at_debug() -> None:
    from shipyard.components.user_errors import classify

    outcome = classify(KeyError("x"))
    assert outcome.code == 1 and "rerun with --debug" in outcome.message and "\n" not in outcome.message


def test_version_and_help_width(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.startswith("shipyard ")
    code, out, _ = _run(["deploy", "--help"], capsys)
    assert code == 0
    assert "--prometheus-url" in out and "--replace" in out and "…" not in out


def test_pt2_and_torchscript_files_register_and_export(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for source, name in (("tiny.pt2", "t-pt2"), ("tiny_ts.pt", "t-ts")):
        code, _, err = _run(["register", source, "--name", name, "--input-example", "example.npy"], capsys)
        assert code == 0, err
    code, _, err = _run(["export", "models:/t-pt2/1", "-o", "t.onnx"], capsys)
    assert code == 0, err
    assert "exporting" in err and "comparing ONNX Runtime with torch" in err  # progress on stderr
    assert (files["root"] / "t.onnx").is_file()
    assert not (files["root"] / "t.onnx.data").exists()  # the exporter's side file is not left behind


def test_a_failing_pipeline_step_is_one_line_too(files: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    """The KFP local runner's step (a subprocess) prints one ``error:`` line, no traceback; the run exits 2."""
    capfd.readouterr()
    try:
        main(["pipeline", "run", "deploy", "-p", "model_uri=models:/nope/1", "-p", f"repository={files['root']}/r",
              "-p", "model_name=x", "--pipeline-root", str(files["root"] / "kfp")])  # fmt: skip
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    everything = out + err
    assert code == 2, everything[-3000:]
    assert "Traceback" not in everything, everything[-3000:]
    assert "error: models:/nope/1: not found in the registry" in everything
    assert err.strip().splitlines()[-1] == (
        "error: the pipeline failed at step 'resolve-model': the step's error is in its log above"
    )


def test_mlflow_plugin_errors_are_one_line_and_leave_nothing_behind(files: dict[str, Path]) -> None:
    import os
    import subprocess

    home = files["root"] / "plugin-home"
    env = {**os.environ, "SHIPYARD_HOME": str(home), "SHIPYARD_MLFLOW_HOME": str(files["root"] / "mlflow")}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "create", "-t", "shipyard", "-m", "models:/nope/1",
         "--name", "other"], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: models:/nope/1: not found in the registry")
    assert not (home / "deployments" / "other-model").exists()  # a failed create leaves nothing behind


@pytest.mark.parametrize(
    "document",
    [{"inputs": [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]}, [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]],
     {"input": [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]}],
    ids=["inputs-rows", "bare-rows", "by-input-name"],
)  # fmt: skip
def test_plugin_predict_reads_the_documented_input_forms(document: object, tmp_path: Path) -> None:
    """``mlflow deployments predict --input-path`` reads the file with pandas.read_json; every form the README
    documents becomes one (batch, 4) array for the model's input."""
    import json

    import pandas as pd

    from shipyard.components.deploy.mlflow_plugin import _as_feeds

    path = tmp_path / "in.json"
    path.write_text(json.dumps(document))
    feeds = _as_feeds(pd.read_json(path), ["input"])
    assert np.asarray(feeds["input"], dtype=np.float32).shape == (2, 4)


def test_plugin_predict_refuses_ragged_rows_in_one_line(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from shipyard.components.deploy.mlflow_plugin import PluginError, _as_feeds

    path = tmp_path / "in.json"
    path.write_text(json.dumps({"inputs": [[0.1, 0.2, 0.3], [1, 2, 3, 4]]}))
    with pytest.raises(PluginError, match="rows differ in length"):
        _as_feeds(pd.read_json(path), ["input"])
