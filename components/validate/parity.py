"""Accuracy parity of a candidate (optimized) model against the reference on held-out data.

Per output: max absolute error and relative error (``max|cand - ref| / max|ref|``, robust to logits near
zero). For classifier outputs (2-D, more than one column): top-1 agreement. With labels: task accuracy of both
and the drop. Tolerances depend on the precision (``DEFAULT_TOLERANCES``); a check is skipped when its
tolerance is None.

Public: ``Tolerances``, ``DEFAULT_TOLERANCES``, ``tolerances_for(precision) -> Tolerances``, ``OutputParity``,
``ParityReport``, ``check_parity(reference, candidate, inputs, labels=None, *, precision="fp32",
tolerances=None, batch_size=64, label_output=None) -> ParityReport``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shipyard.components.errors import ComponentError
from shipyard.components.optimize.calibration import iter_batches
from shipyard.components.validate.runners import Runner


@dataclass(frozen=True)
class Tolerances:
    max_abs: float | None = None
    max_rel: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None


DEFAULT_TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(max_abs=1e-3, max_rel=1e-4, min_top1_agreement=0.999, max_accuracy_drop=0.002),
    "fp16": Tolerances(max_abs=None, max_rel=1e-2, min_top1_agreement=0.99, max_accuracy_drop=0.01),
    "int8": Tolerances(max_abs=None, max_rel=0.5, min_top1_agreement=0.97, max_accuracy_drop=0.02),
}


def tolerances_for(precision: str) -> Tolerances:
    """The default tolerances for ``fp32``, ``fp16`` or ``int8``. Raises: ComponentError for other names."""
    if precision not in DEFAULT_TOLERANCES:
        raise ComponentError(f"no tolerances for precision {precision!r}; choose one of {sorted(DEFAULT_TOLERANCES)}")
    return DEFAULT_TOLERANCES[precision]


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    max_rel: float
    top1_agreement: float | None


@dataclass
class ParityReport:
    samples: int
    precision: str
    tolerances: Tolerances
    outputs: list[OutputParity]
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_candidate - self.accuracy_reference

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None


def _is_classifier(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1


def check_parity(
    reference: Runner,
    candidate: Runner,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    precision: str = "fp32",
    tolerances: Tolerances | None = None,
    batch_size: int = 64,
    label_output: str | None = None,
) -> ParityReport:
    """Run both models on ``inputs`` (in batches) and compare.

    ``label_output``: the classifier output the labels refer to (default: the first 2-D output).
    Raises: ComponentError when the models' inputs/outputs differ or the data lacks an input.
    """
    tol = tolerances or tolerances_for(precision)
    missing = [n for n in reference.input_names if n not in inputs]
    if missing:
        raise ComponentError(f"held-out data lacks inputs {missing}; it has {sorted(inputs)}")
    if set(candidate.output_names) != set(reference.output_names):
        raise ComponentError(
            f"candidate outputs {candidate.output_names} differ from the reference's {reference.output_names}"
        )
    ref_parts: dict[str, list[np.ndarray]] = {n: [] for n in reference.output_names}
    cand_parts: dict[str, list[np.ndarray]] = {n: [] for n in reference.output_names}
    for batch in iter_batches({n: inputs[n] for n in reference.input_names}, batch_size):
        for store, runner in ((ref_parts, reference), (cand_parts, candidate)):
            for name, value in runner.run(batch).items():
                store[name].append(value)
    samples = next(iter(inputs.values())).shape[0]
    report = ParityReport(samples=samples, precision=precision, tolerances=tol, outputs=[])
    for name in reference.output_names:
        ref = np.concatenate(ref_parts[name]).astype(np.float64)
        cand = np.concatenate(cand_parts[name]).astype(np.float64)
        if ref.shape != cand.shape:
            report.failures.append(f"output {name!r}: shape {cand.shape} != reference {ref.shape}")
            continue
        finite = bool(np.all(np.isfinite(cand)))
        diff = np.abs(cand - ref) if finite else np.full(ref.shape, np.inf)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        top1 = float(np.mean(ref.argmax(1) == cand.argmax(1))) if _is_classifier(ref) else None
        report.outputs.append(OutputParity(name, max_abs, max_rel, top1))
        if not finite:
            report.failures.append(f"output {name!r}: the candidate produced NaN or Inf")
        if tol.max_abs is not None and max_abs > tol.max_abs:
            report.failures.append(f"output {name!r}: max abs error {max_abs:.4g} > {tol.max_abs:g}")
        if tol.max_rel is not None and max_rel > tol.max_rel:
            report.failures.append(f"output {name!r}: max rel error {max_rel:.4g} > {tol.max_rel:g}")
        if top1 is not None and tol.min_top1_agreement is not None and top1 < tol.min_top1_agreement:
            report.failures.append(f"output {name!r}: top-1 agreement {top1:.4f} < {tol.min_top1_agreement:g}")
        if (
            labels is not None
            and _is_classifier(ref)
            and (label_output in (None, name))
            and (report.accuracy_reference is None)
        ):
            report.accuracy_reference = float(np.mean(ref.argmax(1) == labels))
            report.accuracy_candidate = float(np.mean(cand.argmax(1) == labels))
    delta = report.accuracy_delta
    if delta is not None and tol.max_accuracy_drop is not None and -delta > tol.max_accuracy_drop:
        report.failures.append(
            f"accuracy dropped {-delta:.4f} ({report.accuracy_reference:.4f} -> {report.accuracy_candidate:.4f})"
            f" > {tol.max_accuracy_drop:g}"
        )
    return report
