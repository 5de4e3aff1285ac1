"""CLI commands ``shipyard register|export|optimize|validate|publish|promote`` (``register_commands(app)``).

Each command prints a JSON summary on stdout and progress/errors on stderr. Exit codes: 0 done; 2 a user
error (bad argument, missing file, unknown model version, target unavailable); 3 the gate said no (validation
failed or promotion refused); 1 an internal error (a traceback). Heavy imports happen inside the commands.
``--model-version models:/NAME/VERSION`` on export/optimize/validate/publish records lineage tags on it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

EXIT_USER_ERROR = 2
EXIT_GATE = 3

TRACKING = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the "
                        "embedded sqlite store under ./.shipyard/mlflow).")  # fmt: skip
MODEL_VERSION = typer.Option(None, "--model-version", help="models:/NAME/VERSION to record lineage tags on.")


def _err(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    from shipyard.components.errors import ComponentError, ValidationFailed
    from shipyard.registry.errors import PromotionRefused, RegistryError

    try:
        yield
    except ValidationFailed as exc:
        _err(exc.text)
        raise typer.Exit(EXIT_GATE) from None
    except PromotionRefused as exc:
        _err(f"error: {exc}")
        raise typer.Exit(EXIT_GATE) from None
    except (ComponentError, RegistryError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(EXIT_USER_ERROR) from None


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))


def _tags(pairs: list[str]) -> dict[str, str]:
    from shipyard.components.errors import ComponentError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ComponentError(f"--tag {pair!r}: use KEY=VALUE")
        out[key] = value
    return out


def _read_example(path: Path) -> Any:
    from shipyard.components.errors import ComponentError
    from shipyard.components.optimize.calibration import read_numpy

    loaded = read_numpy(path)
    if isinstance(loaded, dict):
        raise ComponentError(f"--input-example {path}: an .npz holds several arrays; give one .npy (batch first)")
    return loaded


def _register(source: str, name: str, example: Any, tags: dict[str, str], tracking_uri: str | None) -> Any:
    """Register ``source`` (runs:/..., zoo:NAME or a model file). Raises: ComponentError, registry errors."""
    from shipyard import registry
    from shipyard.components.errors import ComponentError

    if source.startswith("runs:/"):
        run_id, _, artifact = source[len("runs:/") :].partition("/")
        return registry.register_run(run_id, name, artifact_name=artifact or "model", tags=tags,
                                     tracking_uri=tracking_uri)  # fmt: skip
    if source.startswith("zoo:"):
        from shipyard.zoo import torch_model
        from shipyard.zoo.api import example_input

        zoo_name = source[4:]
        try:
            module = torch_model(zoo_name)
        except ValueError as exc:
            raise ComponentError(str(exc)) from None
        sample = next(iter(example_input(zoo_name, batch=2).values())) if example is None else example
        return registry.register_module(module, sample, name, tags=tags, tracking_uri=tracking_uri)
    if example is None:
        raise ComponentError(f"registering the file {source} needs --input-example FILE.npy")
    return registry.register_file(source, name, input_example=example, tags=tags, tracking_uri=tracking_uri)


def register_cmd(
    source: str = typer.Argument(
        ...,
        help="runs:/RUN_ID/NAME, a saved model file (.pt/.pt2/TorchScript), or zoo:NAME (a model of shipyard.zoo).",
    ),
    name: str = typer.Option(..., "--name", help="Registered model name."),
    input_example: Path = typer.Option(
        None, "--input-example", help=".npy batch-first input example (required for a file)."
    ),
    tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE tag on the version (repeatable)."),
    tracking_uri: str = TRACKING,
) -> None:
    """Register a trained PyTorch model as an MLflow model version (idempotent)."""
    with _errors():
        tags = _tags(tag)
        example = _read_example(input_example) if input_example else None
        reg = _register(source, name, example, tags, tracking_uri)
        _err(f"{'registered' if reg.created else 'already registered as'} {reg.uri}")
        _emit({"model_uri": reg.uri, "version": reg.version, "created": reg.created, "run_id": reg.run_id})

def export_cmd(
    model: str = typer.Argument(..., help="models:/NAME/VERSION or models:/NAME@ALIAS."),
    output: Path = typer.Option(Path("model.onnx"), "--output", "-o", help="ONNX file to write."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Largest batch the dynamic axis must serve."),
    input_name: list[str] = typer.Option([], "--input-name", help="ONNX input names (default: input)."),
    output_name: list[str] = typer.Option([], "--output-name", help="ONNX output names (default: output)."),
    tracking_uri: str = TRACKING,
) -> None:
    """Export a registered PyTorch model to ONNX (dynamic batch axis, checked against torch)."""
    with _errors():
        from shipyard.components.stages import export_stage

        result = export_stage(model, output, max_batch_size=max_batch_size, input_names=input_name or None,
                              output_names=output_name or None, tracking_uri=tracking_uri,
                              progress=_err)  # fmt: skip
        _emit({"path": result.path, "sha256": result.sha256, "opset": result.opset,
               "max_abs_diff": result.max_abs_diff, "checked_batches": result.checked_batches})  # fmt: skip

def optimize_cmd(
    onnx_path: Path = typer.Argument(..., help="The exported ONNX model."),
    output_dir: Path = typer.Option(
        Path("optimized"), "--output-dir", "-o", help="Writes model.onnx or model.plan."
    ),
    target: str = typer.Option(
        "auto", "--target", help="tensorrt | onnxruntime | auto (TensorRT only with TensorRT and a GPU)."
    ),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | int8"),
    quantization: str = typer.Option("dynamic", "--quantization", help="INT8 on ONNX Runtime: dynamic | static"),
    calibration_data: Path = typer.Option(None, "--calibration-data", help=".npz (keys: input names) for INT8."),
    max_batch_size: int = typer.Option(None, "--max-batch-size", help="Default: the export's."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", help="TensorRT workspace limit."),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="TensorRT timing cache file (read+written)."),
    graph_level: str = typer.Option("extended", "--graph-level", help="ONNX Runtime: basic | extended | all"),
    model_version: str = MODEL_VERSION,
    tracking_uri: str = TRACKING,
) -> None:
    """Optimize an ONNX model: TensorRT engine (GPU) or ONNX Runtime graph optimizations / INT8 / FP16."""
    with _errors():
        from shipyard.components.optimize import load_arrays
        from shipyard.components.stages import optimize_stage

        calibration = load_arrays(calibration_data)[0] if calibration_data else None
        result = optimize_stage(
            onnx_path, output_dir, model_uri=model_version, tracking_uri=tracking_uri, target=target,
            precision=precision, quantization=quantization, calibration_inputs=calibration,
            max_batch_size=max_batch_size, workspace_mb=workspace_mb, timing_cache=timing_cache,
            graph_level=graph_level,
        )  # fmt: skip
        _err(f"target: {result.target} ({result.reason})")
        _emit({"path": result.path, "target": result.target, "reason": result.reason, "sha256": result.sha256,
               "precision": result.precision, "runtime": result.runtime, "details": result.details})  # fmt: skip

def validate_cmd(
    candidate: Path = typer.Argument(..., help="The optimized model (.onnx or .plan)."),
    reference: Path = typer.Option(..., "--reference", help="The exported FP32 ONNX model."),
    data: Path = typer.Option(..., "--data", help="Held-out .npz: arrays keyed by input name, optional 'labels'."),
    precision: str = typer.Option("fp32", "--precision", help="Selects default tolerances: fp32 | fp16 | int8"),
    max_abs: float = typer.Option(None, "--max-abs", help="Override: max absolute error."),
    max_rel: float = typer.Option(None, "--max-rel", help="Override: max relative error."),
    min_top1: float = typer.Option(None, "--min-top1", help="Override: min top-1 agreement."),
    max_accuracy_drop: float = typer.Option(None, "--max-accuracy-drop", help="Override: max accuracy drop."),
    latency_budget_ms: float = typer.Option(20.0, "--latency-budget-ms", help="For the batching recommendation."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Profile batch sizes 1, 2, 4 ... this."),
    report_dir: Path = typer.Option(Path("validation"), "--report-dir", help="validation.md/.json, profile.png"),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Profile latency and throughput."),
    model_version: str = MODEL_VERSION,
    tracking_uri: str = TRACKING,
) -> None:
    """Gate the optimized model on held-out data, profile it and recommend dynamic batching."""
    with _errors():
        import dataclasses

        from shipyard.components.optimize import load_arrays
        from shipyard.components.stages import validate_stage
        from shipyard.components.validate import tolerances_for

        inputs, labels = load_arrays(data)
        given = {"max_abs": max_abs, "max_rel": max_rel, "min_top1_agreement": min_top1,
                 "max_accuracy_drop": max_accuracy_drop}  # fmt: skip
        overrides = {k: v for k, v in given.items() if v is not None}
        tolerances = dataclasses.replace(tolerances_for(precision), **overrides)
        report = validate_stage(reference, candidate, inputs, labels, model_uri=model_version,
                                tracking_uri=tracking_uri, precision=precision, tolerances=tolerances,
                                profile=profile, max_batch_size=max_batch_size,
                                latency_budget_ms=latency_budget_ms, report_dir=report_dir)  # fmt: skip
        _err(report.summary())
        _emit({**report.as_dict(), "report": report.report_md, "plot": report.plot_png})

def publish_cmd(
    model_file: Path = typer.Argument(..., help="model.onnx or model.plan to publish."),
    repository: str = typer.Option(..., "--repository", help="Path or URI (file://, s3://, gs://)."),
    name: str = typer.Option(..., "--name", help="Model name in the repository."),
    batching_from: Path = typer.Option(None, "--batching-from", help="validation.json with the recommendation."),
    max_batch_size: int = typer.Option(None, "--max-batch-size", help="Overrides the recommendation."),
    io_model: Path = typer.Option(None, "--io-model", help="ONNX file declaring the tensors (needed for .plan)."),
    keep_versions: int = typer.Option(3, "--keep-versions", help="Versions to keep (older ones are removed)."),
    instance_count: int = typer.Option(1, "--instance-count", help="Model instances."),
    background_instances: int = typer.Option(0, "--background-instances", help="Of those, how many run batch-job "
                                             "work first at idle CPU priority (the idle lane; opt-in)."),
    background_lend: bool = typer.Option(True, "--background-lend/--no-background-lend", help="Whether an idle "
                                         "lane instance takes real-time batches (--no-background-lend: batch work "
                                         "only: real-time traffic has the same instances with and without a job)."),
    model_version: str = MODEL_VERSION,
    tracking_uri: str = TRACKING,
) -> None:
    """Publish a model version into a Triton-layout model repository, atomically."""
    with _errors():
        from shipyard.components.stages import publish_stage
        from shipyard.components.validate import load_recommendation

        batching = load_recommendation(batching_from) if batching_from else None
        result = publish_stage(model_file, repository, name, model_uri=model_version, tracking_uri=tracking_uri,
                               max_batch_size=max_batch_size, batching=batching, io_model=io_model,
                               keep_versions=keep_versions, instance_count=instance_count,
                               background_instances=background_instances,
                               background_lend=background_lend)  # fmt: skip
        _err(f"published {name} version {result.version} at {result.version_uri}")
        _emit({"version": result.version, "version_uri": result.version_uri,
               "removed_versions": result.removed_versions})  # fmt: skip

def promote_cmd(
    model: str = typer.Argument(..., help="models:/NAME/VERSION to promote."),
    alias: str = typer.Option("champion", "--alias", help="Alias to point at it (champion, challenger, ...)."),
    require_published: bool = typer.Option(False, "--require-published", help="Also require a publish."),
    max_served_p99_ms: float = typer.Option(None, "--max-served-p99-ms", help="Also require the p99 served by "
                                            "the runtime in a canary rollout (shipyard promotion) within this."),
    tracking_uri: str = TRACKING,
) -> None:
    """Point an alias at a model version, only if it passed validation (the gate)."""
    with _errors():
        from shipyard.components.stages import promote_stage
        from shipyard.registry import Gate

        uri = promote_stage(model, alias, gate=Gate(require_published=require_published,
                                                              max_served_p99_ms=max_served_p99_ms),
                           tracking_uri=tracking_uri)
        _err(f"{alias} -> {uri}")
        _emit({"alias": alias, "model_uri": uri})


def register_commands(app: typer.Typer) -> None:
    """Add the model pipeline commands to ``app``."""
    app.command("register")(register_cmd)
    app.command("export")(export_cmd)
    app.command("optimize")(optimize_cmd)
    app.command("validate")(validate_cmd)
    app.command("publish")(publish_cmd)
    app.command("promote")(promote_cmd)
