"""The pipeline steps as plain functions: what each KFP component (``kfp_components.py``) calls,
testable without KFP.

Each step runs its stage through ``components/stages.py`` (the layer the CLI also uses: the
library call and its lineage on the MLflow model version) and returns a small JSON-able dict for
the component's outputs; deploy, smoke test and alias lookup are pipeline-only. Heavy imports
happen inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

VALIDATION_SAMPLES = 64  # perturbed copies of the input example when no held-out data is given


def export_step(
    model_uri: str, onnx_path: str, *, tracking_uri: str | None = None, max_batch_size: int = 64
) -> dict[str, Any]:
    """Registered PyTorch model -> ONNX (dynamic batch), lineage recorded. Raises: export/registry errors."""
    from shipyard.components.stages import export_stage

    result = export_stage(model_uri, onnx_path, max_batch_size=max_batch_size, tracking_uri=tracking_uri)
    return {
        "onnx_sha256": result.sha256,
        "opset": result.opset,
        "max_abs_diff": result.max_abs_diff,
        "inputs": list(result.input_names),
        "outputs": list(result.output_names),
    }


def optimize_step(
    onnx_path: str,
    output_dir: str,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    target: str = "auto",
    precision: str = "fp32",
    quantization: str = "dynamic",
) -> dict[str, Any]:
    """ONNX -> TensorRT engine or optimized ONNX in ``output_dir``; lineage recorded when ``model_uri`` is given.

    Raises: ComponentError / TargetUnavailable / OptimizeError from ``optimize``.
    """
    from shipyard.components.stages import optimize_stage

    result = optimize_stage(onnx_path, output_dir, model_uri=model_uri, tracking_uri=tracking_uri, target=target,
                            precision=precision, quantization=quantization, progress=False)  # fmt: skip
    return {
        "path": str(result.path),
        "target": result.target,
        "precision": result.precision,
        "sha256": result.sha256,
        "runtime": result.runtime,
        "reason": result.reason,
        "max_batch_size": result.max_batch_size,
    }


def validation_data(
    model_uri: str, input_names: list[str], *, tracking_uri: str | None = None, data_path: str | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Held-out inputs (and labels) from ``data_path`` (.npz/.npy), else perturbed copies of the logged example.

    Raises: ComponentError (bad data file, or no data and no input example).
    """
    from shipyard.components.errors import ComponentError
    from shipyard.components.optimize import load_arrays
    from shipyard.registry import resolve_model

    if data_path:
        return load_arrays(data_path, tuple(input_names))
    example = resolve_model(model_uri, tracking_uri=tracking_uri).input_example()
    if example is None or len(input_names) != 1:
        raise ComponentError(
            f"no validation data for {model_uri}: pass a held-out .npz (data_path) with arrays named {input_names}"
        )
    example = np.asarray(example, dtype=np.float32)
    rng = np.random.default_rng(0)
    base = np.repeat(example[:1], VALIDATION_SAMPLES, axis=0)
    noisy = base + rng.normal(0.0, 0.05, size=base.shape).astype(np.float32) * (np.abs(base).mean() + 1e-3)
    return {input_names[0]: noisy.astype(np.float32)}, None


def validate_step(
    reference: str,
    candidate: str,
    report_dir: str,
    *,
    model_uri: str,
    input_names: list[str],
    tracking_uri: str | None = None,
    data_path: str | None = None,
    precision: str = "fp32",
    max_batch_size: int = 64,
    latency_budget_ms: float = 20.0,
) -> dict[str, Any]:
    """Parity gate + profile; writes ``report_dir/validation.json`` and the report; lineage always recorded.

    Raises: ValidationFailed (after recording the failed verdict, so promotion refuses the version).
    """
    from shipyard.components.stages import validate_stage

    inputs, labels = validation_data(model_uri, input_names, tracking_uri=tracking_uri, data_path=data_path)
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = validate_stage(reference, candidate, inputs, labels, model_uri=model_uri, tracking_uri=tracking_uri,
                            precision=precision, max_batch_size=max_batch_size, latency_budget_ms=latency_budget_ms,
                            report_dir=out, max_seconds_per_batch=0.2)  # fmt: skip
    data = report.as_dict()
    (out / "validation.json").write_text(json.dumps(data, indent=2, default=str))
    data["report_md"] = str(report.report_md) if report.report_md else None
    data["plot_png"] = str(report.plot_png) if report.plot_png else None
    return data


def publish_step(
    model_file: str,
    repository: str,
    model_name: str,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    io_model: str | None = None,
    validation_json: str | None = None,
    keep_versions: int = 3,
) -> dict[str, Any]:
    """Publish the validated model as the next version, with the recommended batching; lineage recorded.

    Raises: PublishError, ComponentError (a validation.json without a recommendation).
    """
    from shipyard.components.stages import publish_stage
    from shipyard.components.validate import load_recommendation

    batching = load_recommendation(validation_json) if validation_json else None
    result = publish_stage(model_file, repository, model_name, model_uri=model_uri, tracking_uri=tracking_uri,
                           batching=batching, io_model=io_model, keep_versions=keep_versions)  # fmt: skip
    return {
        "repository": result.repository,
        "model_name": result.model_name,
        "version": result.version,
        "version_uri": result.version_uri,
        "config": result.config_text,
    }


def deploy_step(
    repository: str,
    name: str,
    *,
    target: str = "local",
    namespace: str = "default",
    http_port: int = 8080,
    grpc_port: int = 8081,
    state_dir: str | None = None,
    gpus: int = 0,
    canary_traffic_percent: int | None = None,
    kubeconfig: str | None = None,
    timeout_s: float = 600.0,
    replace: bool = True,
) -> dict[str, Any]:
    """Serve the repository (local process or KServe) and wait for ready.

    Local: a running deployment of the same name is replaced when ``replace`` (a fresh process
    picks up the new version). Raises: DeployError / DeployTimeout, ValueError (bad settings).
    """
    from shipyard.components.deploy import InferenceServiceSpec, LocalTarget, RuntimeSpec, deploy_kserve, deploy_local

    if target == "local":
        local = LocalTarget(state_dir)
        if replace and local.find(name) is not None:
            local.stop(name)
        result = deploy_local(name, repository, http_port=http_port, grpc_port=grpc_port, state_dir=state_dir,
                              timeout_s=timeout_s)  # fmt: skip
    elif target == "kserve":
        spec = InferenceServiceSpec(name=name, storage_uri=repository, namespace=namespace, gpus=gpus,
                                    canary_traffic_percent=canary_traffic_percent)  # fmt: skip
        result = deploy_kserve(spec, RuntimeSpec(), kubeconfig=kubeconfig, timeout_s=timeout_s)
    else:
        raise ValueError(f"deploy target {target!r} is not supported: use 'local' or 'kserve'")
    return {"target": result.target, "name": result.name, "url": result.url, "grpc_url": result.grpc_url}


def smoke_test(
    url: str, model_name: str, *, reference_model: str | None = None, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Query the served model over OIP v2 REST (tritonclient.http) with deterministic inputs.

    Checks metadata, output shapes and finiteness; with an ``.onnx`` ``reference_model`` also that the
    answers match ONNX Runtime on this machine. Raises: RuntimeError naming what was wrong;
    tritonclient's InferenceServerException when the server refuses the request.
    """
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.split("://", 1)[-1], connection_timeout=timeout_s,
                                              network_timeout=timeout_s)  # fmt: skip
    if not client.is_model_ready(model_name):
        raise RuntimeError(f"model {model_name!r} is not ready at {url}")
    meta = client.get_model_metadata(model_name)
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    inputs = []
    for spec in meta["inputs"]:
        shape = [2 if i == 0 and d == -1 else (1 if d == -1 else int(d)) for i, d in enumerate(spec["shape"])]
        if spec["datatype"] != "FP32":
            raise RuntimeError(f"smoke test feeds FP32 only; input {spec['name']} is {spec['datatype']}")
        array = rng.standard_normal(shape).astype(np.float32)
        feeds[spec["name"]] = array
        tensor = httpclient.InferInput(spec["name"], shape, "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    answer = client.infer(model_name, inputs)
    outputs = {o["name"]: answer.as_numpy(o["name"]) for o in meta["outputs"]}
    for name, value in outputs.items():
        if value is None or not np.all(np.isfinite(value)):
            raise RuntimeError(f"output {name} of {model_name!r} is missing or not finite")
    max_abs_diff = None
    if reference_model and reference_model.endswith(".onnx"):
        import onnxruntime as ort

        session = ort.InferenceSession(reference_model, providers=["CPUExecutionProvider"])
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        max_abs_diff = max(float(np.max(np.abs(outputs[n] - expected[n]))) for n in outputs)
        if max_abs_diff > 1e-3:
            raise RuntimeError(f"served answers differ from ONNX Runtime by {max_abs_diff:.3g} (> 1e-3)")
    return {
        "model": model_name,
        "versions": meta.get("versions", []),
        "outputs": {n: list(v.shape) for n, v in outputs.items()},
        "max_abs_diff": max_abs_diff,
    }


def promote_step(model_uri: str, alias: str, *, tracking_uri: str | None = None) -> str:
    """Point ``alias`` at the version if its validation (and publish) tags pass the gate.

    Returns the versioned URI. Raises: PromotionRefused (alias unchanged), registry errors.
    """
    from shipyard.components.stages import promote_stage
    from shipyard.registry import Gate

    return promote_stage(model_uri, alias, gate=Gate(require_validation=True, require_published=True),
                         tracking_uri=tracking_uri)  # fmt: skip


def alias_version(model_name: str, alias: str, *, tracking_uri: str | None = None) -> int | None:
    """The version ``models:/NAME@ALIAS`` points at now, or None when the alias is unset."""
    from shipyard.registry import ModelVersionNotFound, get_version

    try:
        return int(get_version(f"models:/{model_name}@{alias}", tracking_uri).version)
    except ModelVersionNotFound:
        return None
