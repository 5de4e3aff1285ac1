"""``optimize``: pick the target, run its back end with progress, describe the result."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from shipyard.components.errors import ComponentError, OptimizeError
from shipyard.components.optimize.result import OptimizeResult
from shipyard.components.optimize.targets import Probe, select_target
from shipyard.registry.digest import sha256_file


@contextlib.contextmanager
def _progress(enabled: bool, title: str) -> Iterator[Callable[[str], None]]:
    if not enabled:
        yield lambda _msg: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task(title, total=None)

        def step(message: str) -> None:
            progress.update(task, description=f"{title}: {message}")
            console.log(message)

        yield step


def _max_batch_from_onnx(onnx_path: Path) -> int | None:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise OptimizeError(f"{onnx_path} is not a valid ONNX model ({' '.join(str(exc).split())[:200]})") from None
    for prop in model.metadata_props:
        if prop.key == "shipyard.max_batch_size":
            return int(prop.value)
    return None


def optimize(
    onnx_path: str | Path,
    output_dir: str | Path,
    *,
    target: str = "auto",
    precision: str = "fp32",
    quantization: str = "dynamic",
    calibration_inputs: Mapping[str, np.ndarray] | None = None,
    max_batch_size: int | None = None,
    min_batch_size: int = 1,
    opt_batch_size: int | None = None,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    graph_level: str = "extended",
    progress: bool = True,
    probe: Probe | None = None,
) -> OptimizeResult:
    """Optimize ``onnx_path`` for ``target`` into ``output_dir``.

    ``max_batch_size`` defaults to the one recorded by the export (ONNX metadata), else 64.
    Raises: ComponentError (bad option), TargetUnavailable (``tensorrt`` here without TensorRT/GPU),
    OptimizeError (the back end failed).
    """
    src = Path(onnx_path)
    if not src.is_file():
        raise ComponentError(f"ONNX model not found: {src}")
    choice = select_target(target, probe)
    max_batch = max_batch_size or _max_batch_from_onnx(src) or 64
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress(progress, f"optimize [{choice.target} {precision}]") as step:
        step(choice.reason)
        if choice.target == "tensorrt":
            from shipyard.components.optimize.tensorrt_build import build_tensorrt_engine

            out = out_dir / "model.plan"
            details = build_tensorrt_engine(
                src, out, precision=precision, min_batch_size=min_batch_size, opt_batch_size=opt_batch_size,
                max_batch_size=max_batch, workspace_mb=workspace_mb, timing_cache=timing_cache,
                calibration_inputs=calibration_inputs, step=step,
            )  # fmt: skip
            runtime = f"TensorRT {details['tensorrt_version']} on {details['gpu']}"
        else:
            import onnxruntime as ort

            from shipyard.components.optimize.onnxruntime_opt import optimize_onnxruntime

            out = out_dir / "model.onnx"
            details = optimize_onnxruntime(
                src, out, precision=precision, quantization=quantization, calibration_inputs=calibration_inputs,
                graph_level=graph_level, step=step,
            )  # fmt: skip
            cpu = platform.machine() or "cpu"
            runtime = f"ONNX Runtime {ort.__version__} CPUExecutionProvider ({cpu})"
    return OptimizeResult(
        path=out, target=choice.target, precision=precision, sha256=sha256_file(out), runtime=runtime,
        reason=choice.reason, max_batch_size=max_batch, details=details,
    )  # fmt: skip
