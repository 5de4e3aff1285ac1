"""Tiny real model files and Triton repositories for runtime tests (built in code, no download)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def scale_model(path: Path, factor: float, width: int = 4, batched: bool = True) -> Path:
    """ONNX model ``OUT = IN * factor`` (FP32 ``[batch, width]``, or ``[width]`` when not batched).

    Different factors per version let a test tell versions apart by their answers.
    """
    shape: list[int | str] = ["batch", width] if batched else [width]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["IN", "factor"], ["OUT"])],
        "scale",
        [helper.make_tensor_value_info("IN", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def add_model(path: Path, width: int = 4) -> Path:
    """ONNX model with two inputs: ``SUM = A + B`` (INT64 ``[batch, width]``)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["SUM"])],
        "add",
        [
            helper.make_tensor_value_info("A", TensorProto.INT64, ["batch", width]),
            helper.make_tensor_value_info("B", TensorProto.INT64, ["batch", width]),
        ],
        [helper.make_tensor_value_info("SUM", TensorProto.INT64, ["batch", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


SCALE_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
{extra}
"""


def write_config(model_dir: Path, text: str) -> Path:
    """Write ``config.pbtxt``, making sure its mtime moves even on coarse-clock file systems."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        later = before + 1_000_000
        os.utime(path, ns=(later, later))
    return path


def scale_repo_model(repo: Path, name: str, versions: dict[int, float], extra: str = "") -> Path:
    """A model directory with ``config.pbtxt`` and one scale model per version."""
    model_dir = repo / name
    for version, factor in versions.items():
        scale_model(model_dir / str(version) / "model.onnx", factor)
    write_config(model_dir, SCALE_CONFIG.format(name=name, extra=extra))
    return model_dir


def wait_mtime_tick() -> None:
    """Let the clock move so rewritten files get a new mtime."""
    time.sleep(0.01)
