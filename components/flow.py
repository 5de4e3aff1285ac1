"""The whole path from a trained model to a served one, with lineage recorded at every step.

``deploy_flow(model, *, name, repository, input_example=None, held_out_inputs=None, held_out_labels=None,
work_dir=None, target="auto", precision="fp32", quantization="dynamic", calibration_inputs=None,
max_batch_size=64, latency_budget_ms=20.0, tolerances=None, input_names=None, output_names=None,
keep_versions=3, alias=None, tracking_uri=None, profile=True, progress=False) -> FlowResult``

register -> export -> optimize -> validate -> publish -> (promote ``alias``), each stage through
``components/stages.py`` (the same layer the CLI commands and the KFP pipeline steps call).
``model`` is an ``nn.Module`` (registered with ``input_example``), a saved model file, or a
``models:/NAME/VERSION|@ALIAS`` URI already in the registry. Held-out data defaults to the input
example (no labels); pass real held-out data and labels to gate on task accuracy. Static INT8 needs
``calibration_inputs``. When the gate fails, the version is tagged ``shipyard.validation.passed=false``,
nothing is published, nothing is promoted, and ValidationFailed is raised (its ``.text`` is the
readable report; the report files are in ``work_dir/validation``).

Raises: ValidationFailed, ComponentError subclasses (ExportError, TargetUnavailable, OptimizeError,
PublishError), registry errors (RegistryError, PromotionRefused).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.components.errors import ComponentError

if TYPE_CHECKING:
    from shipyard.components.export import ExportResult
    from shipyard.components.optimize import OptimizeResult
    from shipyard.components.publish import PublishResult
    from shipyard.components.validate import Tolerances, ValidationReport
    from shipyard.registry import RegisteredVersion


@dataclass
class FlowResult:
    model_uri: str
    registered: RegisteredVersion | None
    export: ExportResult
    optimized: OptimizeResult
    validation: ValidationReport
    published: PublishResult
    promoted: str | None
    work_dir: Path


def _register(
    model: Any, name: str, input_example: Any, tracking_uri: str | None
) -> tuple[str, RegisteredVersion | None]:
    from shipyard import registry

    if isinstance(model, str) and model.startswith("models:/"):
        version = registry.get_version(model, tracking_uri)
        return f"models:/{version.name}/{version.version}", None
    if isinstance(model, (str, Path)):
        reg = registry.register_file(model, name, input_example=input_example, tracking_uri=tracking_uri)
    else:
        reg = registry.register_module(model, input_example, name, tracking_uri=tracking_uri)
    return reg.uri, reg


def deploy_flow(
    model: Any,
    *,
    name: str,
    repository: str | Path,
    input_example: Any = None,
    held_out_inputs: Mapping[str, np.ndarray] | None = None,
    held_out_labels: np.ndarray | None = None,
    work_dir: str | Path | None = None,
    target: str = "auto",
    precision: str = "fp32",
    quantization: str = "dynamic",
    calibration_inputs: Mapping[str, np.ndarray] | None = None,
    max_batch_size: int = 64,
    latency_budget_ms: float = 20.0,
    tolerances: Tolerances | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    keep_versions: int | None = 3,
    alias: str | None = None,
    tracking_uri: str | None = None,
    profile: bool = True,
    progress: bool = False,
) -> FlowResult:
    """Run every step; see the module docstring."""
    from shipyard.components import stages

    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"shipyard-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    model_uri, reg = _register(model, name, input_example, tracking_uri)
    lineage = {"model_uri": model_uri, "tracking_uri": tracking_uri}

    exported = stages.export_stage(
        model_uri, work / "export" / "model.onnx", max_batch_size=max_batch_size, input_names=input_names,
        output_names=output_names, tracking_uri=tracking_uri,
    )  # fmt: skip
    optimized = stages.optimize_stage(
        exported.path, work / "optimized", target=target, precision=precision, quantization=quantization,
        calibration_inputs=calibration_inputs, max_batch_size=max_batch_size, progress=progress, **lineage,
    )  # fmt: skip
    if held_out_inputs is None:
        if input_example is not None:
            held_out_inputs = {exported.input_names[0]: np.asarray(input_example)}
        elif exported.example_feeds is not None:
            held_out_inputs = dict(exported.example_feeds)
        else:
            raise ComponentError(f"no held-out data and {model_uri} has no input example; pass held_out_inputs")
    report = stages.validate_stage(
        exported.path, optimized.path, held_out_inputs, held_out_labels, precision=precision,
        tolerances=tolerances, profile=profile, max_batch_size=max_batch_size,
        latency_budget_ms=latency_budget_ms, report_dir=work / "validation", **lineage,
    )  # fmt: skip
    published = stages.publish_stage(
        optimized.path, repository, name, batching=report.recommendation,
        max_batch_size=None if report.recommendation else max_batch_size, io_model=exported.path,
        keep_versions=keep_versions, **lineage,
    )  # fmt: skip
    promoted = stages.promote_stage(model_uri, alias, tracking_uri=tracking_uri) if alias else None
    return FlowResult(model_uri, reg, exported, optimized, report, published, promoted, work)
