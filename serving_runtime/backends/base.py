"""The backend interface every framework implements.

A *backend* knows one model file format. For each ``instance_group`` entry the runtime asks it
for ``count`` *instances* on a device; an instance executes one formed batch at a time and is
called from its worker thread, so it may block. An instance that sets ``inline_safe = True``
(no thread-bound state: CPU ONNX Runtime sessions) may also be called on the event loop thread,
which the dynamic batcher does only while its batches take microseconds
(``scheduling.dynamic``, "Tiny models run inline").

Shapes: when the model's ``max_batch_size > 0`` the arrays passed to ``execute`` carry the batch
as their first dimension (the formed batch); otherwise they are exactly the request's tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model file declares it.

    ``datatype`` is a Triton datatype name (``FP32``, ``INT64``, ``BYTES``...); ``dims`` include
    the batch dimension when the file has one (``-1`` marks a dynamic dimension).
    """

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """What a model file declares; used to complete a missing or partial ``config.pbtxt``."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # True when every input and output has a leading dynamic (or batch) dimension.
    batched: bool = False


@dataclass(frozen=True)
class Device:
    """Where an instance runs: ``kind`` is ``"cpu"`` or ``"gpu"``; ``index`` the GPU ordinal."""

    kind: str = "cpu"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


@dataclass
class InstanceSettings:
    """Everything an instance needs besides the file: device, model ``parameters``, config fields."""

    device: Device
    parameters: Mapping[str, str] = field(default_factory=dict)
    max_batch_size: int = 0
    # The config's inputs/outputs (names, Triton datatypes, dims without the batch dim).
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    # config.optimization as a protobuf message or None; backends read what they support.
    optimization: Any = None
    # The whole completed ModelConfig, the version and this instance's position among the
    # model's instances (the Python backend passes them to the model's ``initialize``).
    config: Any = None
    version: int = 0
    instance_index: int = 0


class BackendInstance(Protocol):
    """A loaded copy of a model on one device. Not shared between threads at the same time."""

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Run one batch. Returns the requested outputs (all when ``outputs`` is empty).

        Raises: any exception; the runtime reports it as a ``BackendError`` for this batch only.
        """
        ...

    def close(self) -> None:
        """Release memory, sessions, streams. Called once, after the last ``execute``."""
        ...


class Backend(Protocol):
    """A framework. Stateless; ``load`` returns independent instances."""

    name: str  # Triton's backend name: "onnxruntime", "tensorrt", "pytorch"
    platform: str  # Triton's platform: "onnxruntime_onnx", "tensorrt_plan", "pytorch_libtorch"
    default_filename: str  # "model.onnx", "model.plan", "model.pt"

    def inspect(self, model_path: Path) -> ModelSignature:
        """Read inputs and outputs from the file (for config completion).

        Raises: ModelLoadError naming the file when it cannot be read.
        """
        ...

    def load(self, model_path: Path, settings: InstanceSettings) -> BackendInstance:
        """Load one instance on ``settings.device``.

        Raises: ModelLoadError naming the file and the reason (corrupt file, no GPU, version
        mismatch...).
        """
        ...
