"""The torch -> ONNX export (see the package docstring for the public functions)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.components.errors import ExportError
from shipyard.registry.digest import sha256_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
MAX_BATCH_METADATA_KEY = "shipyard.max_batch_size"


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely ONNX Runtime reproduces torch."""

    path: Path
    sha256: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_batch_size: int
    max_abs_diff: float
    exporter: str
    checked_batches: tuple[int, ...] = field(default=())
    # the logged input example as ONNX feeds (what validation uses when no held-out data is given)
    example_feeds: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def lineage_tags(self) -> dict[str, Any]:
        from shipyard.registry import lineage as L

        return {
            L.ONNX_SHA256: self.sha256,
            L.ONNX_OPSET: str(self.opset),
            L.EXPORT_MAX_BATCH: str(self.max_batch_size),
            L.EXPORT_MAX_ABS_DIFF: f"{self.max_abs_diff:.3g}",
        }


def _normalize_example(
    input_example: Any, input_names: Sequence[str] | None
) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(input_example, Mapping):
        names = list(input_names or input_example.keys())
        arrays = [np.asarray(_to_numpy(v)) for v in input_example.values()]
    elif isinstance(input_example, (list, tuple)):
        arrays = [np.asarray(_to_numpy(v)) for v in input_example]
        names = list(input_names or (["input"] if len(arrays) == 1 else [f"input__{i}" for i in range(len(arrays))]))
    else:
        arrays = [np.asarray(_to_numpy(input_example))]
        names = list(input_names or ["input"])
    if len(names) != len(arrays):
        raise ExportError(f"{len(arrays)} example inputs but {len(names)} input names ({names}); give one name each")
    for name, arr in zip(names, arrays, strict=True):
        if arr.ndim == 0 or arr.shape[0] < 1:
            raise ExportError(f"input example {name!r} has shape {arr.shape}; it must be batch-first with batch >= 1")
    return arrays, names


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _tile_batch(array: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // array.shape[0])
    return np.concatenate([array] * reps, axis=0)[:batch]


def _torch_outputs(module: Any, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    if isinstance(out, Mapping):
        out = list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [o.detach().cpu().numpy() for o in out]


_PROTOBUF_LIMIT = 2**31 - 1


def _save_single_file(model: Any, path: Path) -> None:
    """Save ``model`` as one file when it fits protobuf's 2 GiB, removing the exporter's ``.data`` side file.

    The dynamo exporter writes weights to ``<name>.data``; ``onnx.load`` already read them into the
    model, so a model under the limit is saved inline and the side file would only be an unused copy.
    """
    import onnx

    side = path.with_name(path.name + ".data")
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        onnx.save(model, str(path), save_as_external_data=True, location=side.name)
        return
    onnx.save(model, str(path))
    side.unlink(missing_ok=True)


def _torch_export(
    module: torch.nn.Module,
    traced: list[Any],
    path: Path,
    names: list[str],
    out_names: list[str],
    max_batch: int,
    opset: int | None,
    say: Callable[[str], None],
) -> str:
    """Write the ONNX file with a dynamic batch axis; returns the exporter used (dynamo, else TorchScript).

    Raises: ExportError when both exporters fail.
    """
    import torch

    say(f"exporting {type(module).__name__} to ONNX with torch.export (dynamic batch 1..{max_batch})")
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, tuple(traced), str(path), input_names=names, output_names=out_names,
                dynamic_shapes=tuple({0: batch} for _ in traced), dynamo=True, opset_version=opset,
                optimize=True, verbose=False,
            )  # fmt: skip
        return "dynamo"
    except Exception as exc:  # torch.export could not trace: try the TorchScript exporter
        log.warning("dynamo export failed (%s); falling back to the TorchScript exporter", str(exc)[:300])
        say("torch.export could not trace the model; exporting with the TorchScript exporter")
    try:
        torch.onnx.export(
            module, tuple(traced), str(path), input_names=names, output_names=out_names,
            dynamic_axes={n: {0: "batch"} for n in [*names, *out_names]}, dynamo=False,
            opset_version=opset or 17,
        )  # fmt: skip
    except Exception as exc2:
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {exc2}") from exc2
    return "torchscript"


def _stamp_and_check(path: Path, max_batch_size: int, say: Callable[[str], None]) -> int:
    """Record ``max_batch_size`` in the model's metadata, save it as one file, run the full ONNX
    checker; returns the opset. Raises: ExportError when the checker rejects the model."""
    import onnx

    model = onnx.load(str(path))
    meta = {p.key: p for p in model.metadata_props}
    if MAX_BATCH_METADATA_KEY in meta:
        meta[MAX_BATCH_METADATA_KEY].value = str(max_batch_size)
    else:
        model.metadata_props.add(key=MAX_BATCH_METADATA_KEY, value=str(max_batch_size))
    _save_single_file(model, path)
    say(f"checking {path} (onnx checker, full check)")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"ONNX checker rejected {path}: {exc}") from exc
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _compare_with_torch(
    module: torch.nn.Module,
    path: Path,
    arrays: list[np.ndarray],
    names: list[str],
    out_names: list[str],
    max_batch_size: int,
    atol: float,
    rtol: float,
    say: Callable[[str], None],
) -> tuple[float, list[int]]:
    """ONNX Runtime vs torch at batch 1, the example's batch and ``max_batch_size``: the largest
    absolute difference and the batch sizes checked. Raises: ExportError on a shape or value mismatch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    checked: list[int] = []
    say(f"comparing ONNX Runtime with torch at batch sizes {sorted({1, arrays[0].shape[0], max_batch_size})}")
    for b in sorted({1, arrays[0].shape[0], max_batch_size}):
        batch_arrays = [_tile_batch(a, b) for a in arrays]
        expected = _torch_outputs(module, batch_arrays)
        try:
            got = session.run(out_names, {n: a for n, a in zip(names, batch_arrays, strict=True)})
        except Exception as exc:
            raise ExportError(f"the exported model fails at batch {b} (is the batch axis dynamic?): {exc}") from exc
        for name, e, g in zip(out_names, expected, got, strict=True):
            if e.shape != g.shape:
                raise ExportError(f"output {name!r} at batch {b}: ONNX shape {g.shape} != torch shape {e.shape}")
            diff = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64)))) if e.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(g, e, atol=atol, rtol=rtol):
                raise ExportError(
                    f"output {name!r} at batch {b}: ONNX Runtime differs from torch by up to {diff:.3g} "
                    f"(atol={atol}, rtol={rtol}); check for data-dependent control flow or raise the tolerance"
                )
        checked.append(b)
    return worst, checked


def export_onnx(
    module: torch.nn.Module,
    input_example: Any,
    output_path: str | Path,
    *,
    max_batch_size: int = 64,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``module`` to ONNX with a dynamic batch axis (1..max_batch_size) and check it.

    Checks: ``onnx.checker.check_model(full_check=True)``; ONNX Runtime at batch 1, at the example's batch
    and at ``max_batch_size`` matches torch within ``atol + rtol*|torch|``. Uses the dynamo exporter
    (torch.export), falling back to the TorchScript exporter when dynamo cannot trace the module.
    ``progress`` receives one line per stage (the CLI prints them on stderr).
    Raises: ExportError (bad example, export failure, checker failure, outputs differ).
    """
    import torch

    if max_batch_size < 1:
        raise ExportError(f"max_batch_size={max_batch_size}: must be >= 1")
    arrays, names = _normalize_example(input_example, input_names)
    try:
        module.eval()
    except NotImplementedError:
        pass  # torch.export modules (MLflow pt2) are already in inference form
    reference = _torch_outputs(module, arrays)
    default_out = ["output"] if len(reference) == 1 else [f"output__{i}" for i in range(len(reference))]
    out_names = list(output_names or default_out)
    if len(out_names) != len(reference):
        raise ExportError(f"the model returns {len(reference)} outputs but {len(out_names)} output names were given")

    # trace with batch >= 2 so the batch dimension is not specialised to 1
    trace_batch = max(2, arrays[0].shape[0])
    traced = [torch.from_numpy(np.ascontiguousarray(_tile_batch(a, trace_batch))) for a in arrays]
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _line: None)
    exporter = _torch_export(module, traced, path, names, out_names, max(max_batch_size, trace_batch), opset, say)
    opset_used = _stamp_and_check(path, max_batch_size, say)
    worst, checked = _compare_with_torch(module, path, arrays, names, out_names, max_batch_size, atol, rtol, say)
    return ExportResult(
        path=path, sha256=sha256_file(path), opset=int(opset_used), input_names=tuple(names),
        output_names=tuple(out_names), max_batch_size=max_batch_size, max_abs_diff=worst, exporter=exporter,
        checked_batches=tuple(checked),
    )  # fmt: skip


def export_registered(
    model_uri: str,
    output_path: str | Path,
    *,
    max_batch_size: int = 64,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    record_lineage: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a registered model version of any supported flavor (its logged input example drives the export).

    PyTorch goes through ``export_onnx``; onnx, sklearn, keras and transformers through
    ``frameworks.export_flavor`` (``input_names``/``output_names`` apply to PyTorch only).
    Raises: ExportError (no input example logged, a missing extra, an unsupported operator, the export fails),
    registry errors.
    """
    import dataclasses

    from shipyard.components.export.frameworks import detect_flavor, export_flavor
    from shipyard.registry import load_torch_model, resolve_model
    from shipyard.registry import record_lineage as record

    if progress is not None:
        progress(f"loading {model_uri} from MLflow")
    resolved = resolve_model(model_uri, tracking_uri=tracking_uri)
    flavor = detect_flavor(resolved.local_path)
    if flavor == "pytorch":
        module, example = load_torch_model(model_uri, tracking_uri=tracking_uri, resolved=resolved)
        if example is None:
            raise ExportError(f"{model_uri} has no logged input example; re-register it with input_example=...")
        result = export_onnx(
            module, example, output_path, max_batch_size=max_batch_size, input_names=input_names,
            output_names=output_names, progress=progress,
        )  # fmt: skip
        result = dataclasses.replace(result, example_feeds={result.input_names[0]: np.asarray(example)})
    else:
        result, feeds = export_flavor(resolved.local_path, output_path, flavor=flavor, max_batch_size=max_batch_size)
        result = dataclasses.replace(result, example_feeds=feeds)
    if record_lineage:
        record(model_uri, {**result.lineage_tags(), "shipyard.export.flavor": flavor}, tracking_uri)
    return result
