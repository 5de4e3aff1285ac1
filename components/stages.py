"""The model pipeline's stages, once: export -> optimize -> validate -> publish -> promote.

Each stage calls its library (``components.export``, ``optimize``, ``validate``, ``publish``,
``registry.promote``) and records that stage's lineage tags on the MLflow model version
``model_uri`` (when given), also for a failed validation, so promotion refuses that version.
Every caller goes through here: the CLI commands (``components/cli.py``), the whole-path flow
(``components/flow.py``, which the MLflow deployment plugin also runs) and the pipeline steps that
the KFP components call (``pipelines/steps.py``). Options are passed to the library function as
they are (see its docstring); heavy imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shipyard.components.export import ExportResult
    from shipyard.components.optimize import OptimizeResult
    from shipyard.components.publish import PublishResult
    from shipyard.components.validate import ValidationReport
    from shipyard.registry import Gate


def record(model_uri: str | None, tags: Mapping[str, Any], tracking_uri: str | None) -> None:
    """Record lineage ``tags`` on ``model_uri`` (nothing when it is None or empty)."""
    if model_uri:
        from shipyard.registry import record_lineage

        record_lineage(model_uri, dict(tags), tracking_uri)


def export_stage(
    model_uri: str,
    output_path: str | Path,
    *,
    max_batch_size: int = 64,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Registered PyTorch model -> ONNX with a dynamic batch axis; the export records its own lineage.

    Raises: ExportError, registry errors.
    """
    from shipyard.components.export import export_registered

    return export_registered(model_uri, output_path, max_batch_size=max_batch_size, input_names=input_names,
                             output_names=output_names, tracking_uri=tracking_uri, progress=progress)  # fmt: skip


def optimize_stage(
    onnx_path: str | Path,
    output_dir: str | Path,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    **options: Any,
) -> OptimizeResult:
    """``optimize(onnx_path, output_dir, **options)``, then its lineage on ``model_uri``.

    Raises: ComponentError, TargetUnavailable, OptimizeError.
    """
    from shipyard.components.optimize import optimize

    result = optimize(onnx_path, output_dir, **options)
    record(model_uri, result.lineage_tags(), tracking_uri)
    return result


def validate_stage(
    reference: str | Path,
    candidate: str | Path,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    **options: Any,
) -> ValidationReport:
    """``validate(reference, candidate, inputs, labels, **options)``; the verdict is recorded on
    ``model_uri`` whether the gate passed or not.

    Raises: ValidationFailed (after recording the failed verdict), ComponentError.
    """
    from shipyard.components.errors import ValidationFailed
    from shipyard.components.validate import validate

    try:
        report = validate(reference, candidate, inputs, labels, **options)
    except ValidationFailed as failed:
        if failed.report is not None:
            record(model_uri, failed.report.lineage_tags(), tracking_uri)
        raise
    record(model_uri, report.lineage_tags(), tracking_uri)
    return report


def publish_stage(
    model_file: str | Path,
    repository: str | Path,
    model_name: str,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    **options: Any,
) -> PublishResult:
    """``publish(model_file, repository, model_name, mlflow_model_uri=model_uri, **options)``, then
    its lineage on ``model_uri``.

    Raises: PublishError, ComponentError.
    """
    from shipyard.components.publish import publish

    result = publish(model_file, repository, model_name, mlflow_model_uri=model_uri, **options)
    record(model_uri, result.lineage_tags(), tracking_uri)
    return result


def promote_stage(model_uri: str, alias: str, *, gate: Gate | None = None, tracking_uri: str | None = None) -> str:
    """Point ``alias`` at the version if ``gate`` (default: validation passed) allows it.

    Returns the versioned URI. Raises: PromotionRefused (alias unchanged), registry errors.
    """
    from shipyard.registry import promote

    return promote(model_uri, alias, gate=gate, tracking_uri=tracking_uri)
