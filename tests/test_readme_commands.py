"""Every command README.md shows runs as written, in order, against a scratch MLflow store and repository.

The commands are extracted from README.md's ```bash blocks (continuation lines joined, comments
dropped), so a change to the README is tested as it stands. What is changed, and why:

- ``/srv/models`` (and ``file:///srv/models``) becomes a scratch folder: the tests may not write /srv;
- commands that start a server get free ports (``--http-port/--grpc-port``, ``-p http_port=..``, ``-C
  http_port=..``) and a scratch ``--state-dir``: 8080/8081 may be taken on a shared machine;
- ``[--model-repository /more]`` (an optional part) is dropped; a long-running ``shipyard serve`` is
  stopped once it is ready.

Skipped, and said so: ``make ...`` (the Makefile's own targets, run by CI itself),
``shipyard pipeline submit`` (needs a Kubeflow Pipelines endpoint) and commands on an object store
(``s3://...`` other than ``--dry-run``, ``AWS_ENDPOINT_URL=...``: need the store).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, stop_local_runtimes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# the console script, or the module where this venv overlays another one without the script
MLFLOW = [str(BIN / "mlflow")] if (BIN / "mlflow").exists() else [sys.executable, "-m", "mlflow"]


# README blocks preceded by this HTML comment need real hosts (an MLflow server, the promotion service); the
# comment names the test that runs the same flow against real parts on loopback
SKIP_MARK = "(readme-test: skip) -->"


def readme_commands() -> list[list[str]]:
    """The commands of README.md in document order, as argument lists: every line of its ```bash blocks
    (comments dropped, continuation lines joined) and the inline `mlflow deployments ...` commands."""
    text = (ROOT / "README.md").read_text()
    commands: list[list[str]] = []
    for match in re.finditer(r"```bash\n(.*?)```|`(mlflow deployments [^`]+)`", text, flags=re.S):
        if text[: match.start()].rstrip().endswith(SKIP_MARK):
            continue  # a block for a cluster (named hosts, services); its own test runs the same flow
        block = match.group(1) if match.group(1) is not None else match.group(2).replace("\n", " ")
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _adapt(words: list[str], scratch: Path, ports: tuple[int, int]) -> list[str] | None:
    """The command as this test runs it (see the module docstring), or None when it is skipped."""
    remote = any(w.startswith(("s3://", "gs://", "az://")) for w in words) and "--dry-run" not in words
    if words[0] == "make" or words[:3] == ["shipyard", "pipeline", "submit"] or "=" in words[0] or remote:
        return None  # the Makefile's targets; a Kubeflow endpoint; an object store (s3://, AWS_ENDPOINT_URL=...)
    repo = str(scratch / "srv-models")
    out = [w.replace("file:///srv/models", f"file://{repo}").replace("/srv/models", repo) for w in words]
    out = [w for w in out if not (w.startswith("[") or w.endswith("]"))] if "[--model-repository" in out else out
    http, grpc = ports
    if out[:2] == ["shipyard", "serve"]:
        out = [w for w in out if w not in ("8080", "8081", "--http-port", "--grpc-port")]
        out += ["--http-port", str(http), "--grpc-port", str(grpc)]
    elif out[:2] == ["shipyard", "deploy"] and "--target" in out and out[out.index("--target") + 1] == "local":
        out += ["--http-port", str(http), "--grpc-port", str(grpc), "--state-dir", str(scratch / "state")]
    elif out[:4] == ["shipyard", "pipeline", "run", "deploy"]:
        out += ["-p", f"http_port={http}", "-p", f"grpc_port={grpc}", "-p", f"state_dir={scratch / 'state'}"]
    elif out[:3] == ["mlflow", "deployments", "create"]:
        out += ["-C", f"http_port={http}", "-C", f"grpc_port={grpc}"]
    if out[0] == "mlflow":
        out = [*MLFLOW, *out[1:]]
    elif out[0] == "shipyard":
        out[0] = str(BIN / out[0])
    elif out[0] == "python":
        out[0] = sys.executable
    return out


def _serve_until_ready(command: list[str], env: dict[str, str], cwd: Path, http: int) -> None:
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "shipyard serve never became ready"
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the whole README: export, INT8, validation, a local pipeline run, two deploys
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    from shipyard import zoo

    env = {**os.environ, "SHIPYARD_MLFLOW_HOME": str(tmp_path / "mlflow"), "SHIPYARD_HOME": str(tmp_path / "home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    data = zoo.digits_data()
    rows = data.x_test[:3].tolist()
    (tmp_path / "in.json").write_text(json.dumps({"inputs": rows}))  # the form the README documents
    ran: list[str] = []
    skipped: list[str] = []
    try:
        _run_all(env, tmp_path, ran, skipped)
    finally:  # a failure midway leaves no runtime running
        stop_local_runtimes(tmp_path / "state", tmp_path / "home" / "deployments")
    print("ran:", *ran, "skipped (make targets; a Kubeflow endpoint; an object store):", *skipped, sep="\n  ")
    assert len(ran) >= 12
    assert any(w.startswith("shipyard pipeline run deploy") for w in ran)


def _run_all(env: dict[str, str], tmp_path: Path, ran: list[str], skipped: list[str]) -> None:
    """Run README.md's commands in order, appending each to ``ran`` or ``skipped``."""
    for words in readme_commands():
        ports = (free_port(), free_port())
        command = _adapt(words, tmp_path, ports)
        if command is None:
            skipped.append(" ".join(words))
            continue
        if words[:2] == ["shipyard", "serve"]:
            _serve_until_ready(command, env, tmp_path, ports[0])
            ran.append(" ".join(words))
            continue
        started = time.monotonic()
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        print(f"{time.monotonic() - started:6.1f} s  exit {result.returncode}  {' '.join(words)[:100]}", flush=True)
        assert result.returncode == 0, f"{' '.join(words)}\n-> exit {result.returncode}\n{result.stderr[-3000:]}"
        ran.append(" ".join(words))
        if words[:3] == ["mlflow", "deployments", "predict"]:  # the input form the README documents
            assert len(json.loads(result.stdout)["predictions"]) == 3
        if words[:2] == ["shipyard", "deploy"] and "local" in words:
            stop = [str(BIN / "shipyard"), "undeploy", words[words.index("--name") + 1], "--target", "local",
                    "--state-dir", str(tmp_path / "state")]  # fmt: skip
            subprocess.run(stop, env=env, cwd=tmp_path, capture_output=True, timeout=120, check=True)
        if words[:4] == ["shipyard", "pipeline", "run", "deploy"]:
            stop = [str(BIN / "shipyard"), "undeploy", "digits", "--state-dir", str(tmp_path / "state")]
            subprocess.run(stop, env=env, cwd=tmp_path, capture_output=True, timeout=120, check=True)
    if any(w.startswith("mlflow deployments create") for w in ran):  # clean up the plugin's deployment
        delete = [*MLFLOW, "deployments", "delete", "-t", "shipyard", "--name", "digits"]
        subprocess.run(delete, env=env, cwd=tmp_path, capture_output=True, timeout=120, check=True)
