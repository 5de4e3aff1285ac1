"""The CLI commands: --help, the whole chain on files, and clear errors with distinct exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from shipyard.components.cli import register_commands

COMMANDS = ("register", "export", "optimize", "validate", "publish", "promote")


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register_commands(app)
    return app


def _json(output: str) -> dict:
    return json.loads(output[output.index("{") :])


def test_every_command_has_help(app: typer.Typer) -> None:
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name


@pytest.mark.slow
def test_cli_chain(app: typer.Typer, tmp_path: Path, digits: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_MLFLOW_HOME", str(tmp_path / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    d = digits
    data = tmp_path / "held_out.npz"
    np.savez(data, input=d.x_test, labels=d.y_test)  # type: ignore[attr-defined]

    r = runner.invoke(app, ["register", "zoo:digits_cnn", "--name", "digits", "--tag", "team=vision"])
    assert r.exit_code == 0, r.output
    uri = _json(r.stdout)["model_uri"]
    r = runner.invoke(app, ["export", uri, "-o", str(tmp_path / "m.onnx"), "--max-batch-size", "16",
                            "--output-name", "logits"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "opt"), "--precision", "int8",
                            "--model-version", uri])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "auto: ONNX Runtime on CPU" in r.output

    # promotion before validation is refused (exit 3)
    r = runner.invoke(app, ["promote", uri, "--alias", "champion"])
    assert r.exit_code == 3 and "not validated" in r.output

    r = runner.invoke(app, ["validate", str(tmp_path / "opt" / "model.onnx"), "--reference", str(tmp_path / "m.onnx"),
                            "--data", str(data), "--precision", "int8", "--max-batch-size", "16",
                            "--report-dir", str(tmp_path / "rep"), "--model-version", uri])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _json(r.stdout)["passed"] is True
    r = runner.invoke(app, ["publish", str(tmp_path / "opt" / "model.onnx"), "--repository", str(tmp_path / "repo"),
                            "--name", "digits", "--batching-from", str(tmp_path / "rep" / "validation.json"),
                            "--model-version", uri])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "repo" / "digits" / "1" / "model.onnx").is_file()
    r = runner.invoke(app, ["promote", uri, "--alias", "champion", "--require-published"])
    assert r.exit_code == 0, r.output

    # a failing gate: exit 3 and the report on stderr
    r = runner.invoke(app, ["validate", str(tmp_path / "opt" / "model.onnx"), "--reference", str(tmp_path / "m.onnx"),
                            "--data", str(data), "--precision", "fp32", "--no-profile",
                            "--report-dir", str(tmp_path / "rep2")])  # fmt: skip
    assert r.exit_code == 3 and "Gate: FAILED" in r.output


def test_cli_user_errors(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["optimize", str(tmp_path / "missing.onnx")])
    assert r.exit_code == 2 and "ONNX model not found" in r.output
    r = runner.invoke(app, ["promote", "digits:3"])
    assert r.exit_code == 2 and "models:/NAME/VERSION" in r.output
