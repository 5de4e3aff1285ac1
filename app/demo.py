"""``make demo``: the whole flow on the embedded default, stage by stage, then the model served.

train the digits CNN (zoo) -> register in MLflow (sqlite under the work dir) -> the KFP deploy
pipeline on the local runner (export -> optimize -> validate gate -> publish -> deploy -> smoke
test) -> promote to ``@champion`` through the gate -> query the served model over REST and gRPC ->
serve on localhost until Ctrl-C. Every stage prints what it did; nothing is skipped silently.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

MODEL_NAME = "digits"
REGISTERED_NAME = "digits-cnn"
ALIAS = "champion"


class _Stages:
    """Numbered stage headers with elapsed time, so long work shows progress."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.index = console, total, 0
        self.started = time.monotonic()

    def begin(self, title: str) -> None:
        self.index += 1
        elapsed = time.monotonic() - self.started
        self.console.rule(f"[bold cyan][{self.index}/{self.total}] {title}[/]  [dim](t+{elapsed:.0f}s)[/]")


def run_demo(workdir: str | Path, *, serve: bool = True, http_port: int = 8080, grpc_port: int = 8081) -> int:
    """Run the demo; returns the process exit code (0 ok, 2 a port is busy, 1 a stage failed)."""
    from shipyard.components.deploy.local import port_is_free

    console = Console()
    work = Path(workdir).resolve()
    for port in (http_port, grpc_port):
        if not port_is_free("127.0.0.1", port):
            console.print(f"[red]port {port} is in use[/]: stop what uses it, or pass --http-port/--grpc-port")
            return 2
    stages = _Stages(console, total=6)
    deployment: dict[str, Any] | None = None
    try:
        deployment = _run_stages(console, stages, work, http_port, grpc_port)
        if serve:
            _serve_until_interrupted(console, deployment)
        return 0
    except Exception as exc:  # a stage failed: say which and why, then clean up
        console.print(f"[red]demo failed in stage {stages.index}: {type(exc).__name__}: {exc}[/]")
        return 1
    finally:
        _stop_deployment(console, work)


def _run_stages(console: Console, stages: _Stages, work: Path, http_port: int, grpc_port: int) -> dict[str, Any]:
    import shipyard.registry as registry
    from shipyard import zoo
    from shipyard.zoo.torch_models import accuracy

    tracking_uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    (work / "mlflow").mkdir(parents=True, exist_ok=True)

    stages.begin("train the digits CNN on scikit-learn's bundled digits (cached after the first run)")
    data = zoo.digits_data()
    model = zoo.torch_model("digits_cnn")
    torch_acc = accuracy(model, data.x_test, data.y_test)
    console.print(f"test accuracy {torch_acc:.4f} on {len(data.y_test)} held-out images")

    stages.begin(f"register in MLflow ({tracking_uri})")
    registered = registry.register_module(model, data.x_test[:1], REGISTERED_NAME, tracking_uri=tracking_uri)
    console.print(f"model version {registered.uri}")

    stages.begin("KFP deploy pipeline on the local runner: export -> optimize -> validate -> publish -> deploy")
    data_path = work / "data" / "digits_heldout.npz"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data_path, input=data.x_test, labels=data.y_test)
    repository = work / "repository"
    from shipyard.pipelines.definitions import make_deploy_pipeline
    from shipyard.pipelines.pipeline_cli import run_local

    url = run_local(
        make_deploy_pipeline(),
        {
            "model_uri": registered.uri,
            "repository": str(repository),
            "model_name": MODEL_NAME,
            "deployment_name": MODEL_NAME,
            "tracking_uri": tracking_uri,
            "data_path": str(data_path),
            "target": "local",
            "http_port": http_port,
            "grpc_port": grpc_port,
            "state_dir": str(work / "deployments"),
        },
        work / "kfp",
    )
    console.print(f"pipeline output: served at {url}")

    stages.begin(f"promote {registered.uri} to @{ALIAS} through the validation gate")
    from shipyard.pipelines.steps import promote_step

    promoted = promote_step(registered.uri, ALIAS, tracking_uri=tracking_uri)
    console.print(f"models:/{REGISTERED_NAME}@{ALIAS} -> {promoted}")
    lineage = registry.get_lineage(registered.uri, tracking_uri=tracking_uri)
    table = Table("lineage tag", "value", title="MLflow model version tags")
    for key, value in sorted(lineage.items()):
        table.add_row(key, value if len(value) < 90 else value[:87] + "...")
    console.print(table)

    stages.begin("query the served model with tritonclient (REST and gRPC)")
    served_acc, names = _query_served(console, http_port, grpc_port, data.x_test, data.y_test, model)
    console.print(f"served accuracy {served_acc:.4f} (torch {torch_acc:.4f})")

    stages.begin("serving")
    _print_examples(console, http_port, grpc_port, names)
    return {"url": url, "http_port": http_port}


def _query_served(
    console: Console, http_port: int, grpc_port: int, x: np.ndarray, y: np.ndarray, model: Any
) -> tuple[float, tuple[str, str]]:
    """Served accuracy on ``x``/``y``, and the model's (input, output) names from its metadata."""
    import torch
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    metadata = http.get_model_metadata(MODEL_NAME)
    input_name, output_name = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]
    console.print(f"model metadata: inputs {metadata['inputs']}, outputs {metadata['outputs']}")
    predictions = []
    for start in range(0, len(x), 32):  # the published max_batch_size may be small; 32 stays under it
        batch = x[start : start + 32]
        tensor = httpclient.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        predictions.append(http.infer(MODEL_NAME, [tensor]).as_numpy(output_name).argmax(axis=1))
    served = np.concatenate(predictions)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    agreement = float((served == expected).mean())
    console.print(f"REST: {len(x)} images, top-1 agreement with torch {agreement:.4f}")

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    tensor_g = grpcclient.InferInput(input_name, [1, 1, 8, 8], "FP32")
    tensor_g.set_data_from_numpy(x[:1])
    digit = int(grpc.infer(MODEL_NAME, [tensor_g]).as_numpy(output_name).argmax())
    console.print(f"gRPC: first test image is a {digit} (label {int(y[0])})")
    return float((served == y).mean()), (input_name, output_name)


def _print_examples(console: Console, http_port: int, grpc_port: int, names: tuple[str, str]) -> None:
    zeros = ",".join(["0"] * 64)
    input_name, output_name = names
    console.print(
        "Try it:\n"
        f"  curl -s localhost:{http_port}/v2/models/{MODEL_NAME}\n"
        f"  curl -s localhost:{http_port}/v2/models/{MODEL_NAME}/infer -H 'Content-Type: application/json' \\\n"
        f"    -d '{{\"inputs\":[{{\"name\":\"{input_name}\",\"shape\":[1,1,8,8],\"datatype\":\"FP32\","
        f"\"data\":[{zeros}]}}]}}'\n"
        f"  curl -s localhost:{http_port}/metrics | grep nv_inference_count\n"
        "  python - <<'EOF'\n"
        "  import numpy as np, tritonclient.grpc as g\n"
        f"  c = g.InferenceServerClient('localhost:{grpc_port}')\n"
        f"  x = g.InferInput('{input_name}', [1, 1, 8, 8], 'FP32')\n"
        "  x.set_data_from_numpy(np.zeros((1, 1, 8, 8), 'float32'))\n"
        f"  print(c.infer('{MODEL_NAME}', [x]).as_numpy('{output_name}'))\n"
        "  EOF",
        markup=False,
        soft_wrap=True,
    )


def _serve_until_interrupted(console: Console, deployment: dict[str, Any]) -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"[green]serving at {deployment['url']} (gRPC on the next port); press Ctrl-C to stop[/]")
    try:
        stop.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_deployment(console: Console, work: Path) -> None:
    from shipyard.components.deploy.local import LocalTarget

    target = LocalTarget(work / "deployments")
    if target.find(MODEL_NAME) is not None:
        target.stop(MODEL_NAME)
        console.print("stopped the local runtime")
