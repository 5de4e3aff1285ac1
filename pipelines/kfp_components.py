"""KFP v2 components: typed, documented, thin. Each body imports inside and calls ``shipyard.pipelines.steps``
(which calls the per-stage layer, ``shipyard.components.stages``).

Model artifacts are directories holding one file (``model.onnx`` or ``model.plan``; its name is in
``metadata["file"]``), so the file suffix tells every stage what the model is.
Errors follow the project's one style (``shipyard.components.user_errors.step_errors``): one ``error:``
line, exit code 2 for a user error, 3 for a gate that said no (its report printed first), 1 for a bug
(with its traceback).

(No ``from __future__ import annotations`` here: KFP reads the annotations at decoration time.)
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

# The project's image (pipelines/Dockerfile: the pipeline, serve and store extras, kfp included, so KFP
# installs nothing at pod start); `shipyard pipeline compile --image` replaces it. The KFP local
# runner ignores it and uses this environment.
PIPELINE_IMAGE = "ghcr.io/shipyard/shipyard:0.1.0"


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def resolve_model(model_uri: str, tracking_uri: str) -> NamedTuple("Resolved", name=str, version=int, uri=str):  # type: ignore[valid-type]
    """Resolve ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` to a fixed version (so later steps agree)."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        from collections import namedtuple

        from shipyard.registry import get_version

        version = get_version(model_uri, tracking_uri or None)
        resolved = namedtuple("Resolved", ["name", "version", "uri"])  # type: ignore[name-match]
        return resolved(version.name, int(version.version), f"models:/{version.name}/{version.version}")


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def export_onnx(model_uri: str, tracking_uri: str, max_batch_size: int, onnx_model: Output[Model]) -> list:
    """Export the registered PyTorch model to ONNX with a dynamic batch axis; returns the input names."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        import os

        from shipyard.pipelines.steps import export_step

        os.makedirs(onnx_model.path, exist_ok=True)
        info = export_step(model_uri, os.path.join(onnx_model.path, "model.onnx"), tracking_uri=tracking_uri or None,
                           max_batch_size=max_batch_size)  # fmt: skip
        onnx_model.metadata.update({"file": "model.onnx", "sha256": info["onnx_sha256"], "opset": info["opset"]})
        return list(info["inputs"])


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def optimize_model(
    onnx_model: Input[Model],
    model_uri: str,
    tracking_uri: str,
    target: str,
    precision: str,
    quantization: str,
    optimized_model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Optimize for TensorRT (GPU) or ONNX Runtime (CPU); returns the chosen target. Records lineage."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        import os

        from shipyard.pipelines.steps import optimize_step

        info = optimize_step(os.path.join(onnx_model.path, onnx_model.metadata.get("file", "model.onnx")),
                             optimized_model.path, model_uri=model_uri, tracking_uri=tracking_uri or None,
                             target=target, precision=precision, quantization=quantization)  # fmt: skip
        optimized_model.metadata.update({"file": os.path.basename(info["path"]), **{k: info[k] for k in
                                         ("target", "precision", "sha256", "runtime", "reason")}})  # fmt: skip
        metrics.log_metric("max_batch_size", info["max_batch_size"])
        print(f"optimize: {info['target']} {info['precision']} ({info['reason']})")
        return str(info["target"])


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def validate_model(
    reference: Input[Model],
    candidate: Input[Model],
    model_uri: str,
    tracking_uri: str,
    input_names: list,
    data_path: str,
    precision: str,
    max_batch_size: int,
    latency_budget_ms: float,
    validation: Output[Artifact],
    report: Output[Markdown],
    plot: Output[HTML],
    metrics: Output[Metrics],
) -> bool:
    """Accuracy parity gate and latency profile. A failing gate writes its report, then fails the task."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        import base64
        import os

        from shipyard.components.errors import ValidationFailed
        from shipyard.pipelines.steps import validate_step

        try:
            data = validate_step(os.path.join(reference.path, reference.metadata.get("file", "model.onnx")),
                                 os.path.join(candidate.path, candidate.metadata.get("file", "model.onnx")),
                                 validation.path, model_uri=model_uri, input_names=list(input_names),
                                 tracking_uri=tracking_uri or None, data_path=data_path or None, precision=precision,
                                 max_batch_size=max_batch_size, latency_budget_ms=latency_budget_ms)  # fmt: skip
        except ValidationFailed as exc:
            with open(report.path, "w") as fh:
                fh.write(exc.text)
            print(exc.text)
            raise SystemExit(3) from None
        if data.get("report_md"):
            with open(data["report_md"]) as src, open(report.path, "w") as fh:
                fh.write(src.read())
        png = data.get("plot_png")
        with open(plot.path, "w") as fh:
            if png:
                encoded = base64.b64encode(open(png, "rb").read()).decode()
                fh.write(f'<html><body><img src="data:image/png;base64,{encoded}"/></body></html>')
            else:
                fh.write("<html><body>no profile plot</body></html>")
        validation.metadata["file"] = "validation.json"
        for out in data.get("outputs", []):
            metrics.log_metric(f"max_abs_err_{out.get('name')}", float(out.get("max_abs_error", 0.0) or 0.0))
        if data.get("accuracy_candidate") is not None:
            metrics.log_metric("accuracy", float(data["accuracy_candidate"]))
        rec = data.get("recommendation") or {}
        for key in ("max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds", "background_rows"):
            if key in rec:
                metrics.log_metric(f"recommended_{key}", rec[key] if not isinstance(rec[key], list) else rec[key][0])
        return bool(data["passed"])


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def publish_model(
    optimized_model: Input[Model],
    onnx_model: Input[Model],
    validation: Input[Artifact],
    repository: str,
    model_name: str,
    model_uri: str,
    tracking_uri: str,
) -> NamedTuple("Published", version=int, version_uri=str):  # type: ignore[valid-type]
    """Publish the validated model as the next version of ``model_name`` (atomic) with the recommended batching."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        import os
        from collections import namedtuple

        from shipyard.pipelines.steps import publish_step

        info = publish_step(os.path.join(optimized_model.path, optimized_model.metadata.get("file", "model.onnx")),
                            repository, model_name, model_uri=model_uri, tracking_uri=tracking_uri or None,
                            io_model=os.path.join(onnx_model.path, onnx_model.metadata.get("file", "model.onnx")),
                            validation_json=os.path.join(validation.path, "validation.json"))  # fmt: skip
        print(info["config"])
        published = namedtuple("Published", ["version", "version_uri"])  # type: ignore[name-match]
        return published(int(info["version"]), str(info["version_uri"]))  # type: ignore[return-value]


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy_model(
    repository: str,
    name: str,
    target: str,
    namespace: str,
    http_port: int,
    grpc_port: int,
    state_dir: str,
    gpus: int,
    canary_traffic_percent: int,
    kubeconfig: str,
    timeout_s: float,
) -> NamedTuple("Deployed", url=str, grpc_url=str):  # type: ignore[valid-type]
    """Serve the repository: a local runtime process, or KServe (canary when ``canary_traffic_percent`` is 1..99)."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        from collections import namedtuple

        from shipyard.pipelines.steps import deploy_step

        info = deploy_step(repository, name, target=target, namespace=namespace, http_port=http_port,
                           grpc_port=grpc_port, state_dir=state_dir or None, gpus=gpus,
                           canary_traffic_percent=canary_traffic_percent if 0 < canary_traffic_percent < 100 else None,
                           kubeconfig=kubeconfig or None, timeout_s=timeout_s)  # fmt: skip
        print(f"deployed {name}: {info['url']}")
        deployed = namedtuple("Deployed", ["url", "grpc_url"])  # type: ignore[name-match]
        return deployed(str(info["url"]), str(info["grpc_url"] or ""))  # type: ignore[return-value]


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def smoke_test(url: str, model_name: str, reference: Input[Model], metrics: Output[Metrics]) -> str:
    """Query the served model (OIP v2 REST) and compare with ONNX Runtime on the reference ONNX."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        import json
        import os

        from shipyard.pipelines.steps import smoke_test as run

        info = run(url, model_name, reference_model=os.path.join(reference.path, reference.metadata.get("file", "")))
        if info["max_abs_diff"] is not None:
            metrics.log_metric("served_max_abs_diff", info["max_abs_diff"])
        return json.dumps(info)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def alias_version(model_name: str, alias: str, tracking_uri: str) -> int:
    """The version an alias points at now (0 when unset): tells a first rollout from an update."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        from shipyard.pipelines.steps import alias_version as lookup

        return lookup(model_name, alias, tracking_uri=tracking_uri or None) or 0


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def promote_model(model_uri: str, alias: str, tracking_uri: str) -> str:
    """Give the version the alias if the gate allows (validated, published); refusals fail the task."""
    from shipyard.components.user_errors import step_errors

    with step_errors():
        from shipyard.pipelines.steps import promote_step
        from shipyard.registry import PromotionRefused

        try:
            return promote_step(model_uri, alias, tracking_uri=tracking_uri or None)
        except PromotionRefused as exc:
            print(f"promotion refused: {exc}")
            raise SystemExit(3) from None


ALL_COMPONENTS = (
    resolve_model,
    export_onnx,
    optimize_model,
    validate_model,
    publish_model,
    deploy_model,
    smoke_test,
    alias_version,
    promote_model,
)
