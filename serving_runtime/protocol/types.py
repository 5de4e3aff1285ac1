"""The protocol <-> model seam: protocol-neutral forms of an inference request and its outputs
(shared by both codecs), and what the protocol layer and the server need from a served model
(``ModelLike``, implemented by ``model.ServedModel``) and from the model manager (``ManagerLike``,
implemented by ``manager.ModelManager``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shipyard.serving_runtime.backends.base import TensorSpec
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.stats import ModelStats

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig


@dataclass(frozen=True)
class ShmRef:
    """A tensor in a registered shared-memory region: ``byte_size`` bytes at ``offset`` of ``region``."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass
class DecodedInput:
    """One input tensor as the client sent it: ``data`` already has ``shape`` and the datatype's dtype."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    shm: ShmRef | None = None  # data comes from shared memory (read when the request binds it)


@dataclass
class RequestedOutput:
    """An output the client asked for. ``binary`` is REST's per-output ``binary_data`` (None: not given)."""

    name: str
    binary: bool | None = None
    shm: ShmRef | None = None  # write the output into this shared-memory window


@dataclass
class DecodedRequest:
    """A decoded inference request. ``id`` is None when the client sent none (never echo null)."""

    inputs: list[DecodedInput]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass
class EncodedOutput:
    """One output ready to encode: protocol datatype, client-visible shape and the array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    shm: ShmRef | None = None  # written to shared memory: send these parameters, not the data


class ModelLike(Protocol):
    """One ready model version as the protocol layer uses it (``ServedModel``).

    ``inputs``/``outputs`` carry Triton datatype names and dims without the batch dim; ``config``
    is the completed ``ModelConfig``. Validation (``validate.py``) reads only the tensors, the
    config and ``max_batch_size``; the frontends also call ``infer`` and ``metadata``.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def max_batch_size(self) -> int: ...

    async def infer(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Run one validated request. Raises: QueueFull, RequestTimeout, BackendError, ModelNotReady."""
        ...

    def metadata(self, versions: Sequence[int] | None = None) -> dict[str, object]:
        """Open Inference Protocol model metadata."""
        ...


class ManagerLike(Protocol):
    """What the frontends (``InferenceService``) and the server need from the model manager."""

    def get(self, name: str, version: int | None = None) -> ModelLike:
        """The ready version (latest when None). Raises: ModelNotFound, ModelNotReady."""
        ...

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]: ...

    async def load(self, name: str, config_json: str | None = None) -> None: ...

    async def unload(self, name: str) -> None: ...

    def is_ready(self, strict: bool) -> bool: ...

    def all_stats(self) -> list[ModelStats]: ...

    async def start(self) -> None:
        """Load the repository (startup)."""
        ...

    async def poll(self) -> None:
        """Apply repository changes (poll mode)."""
        ...

    async def shutdown(self) -> None:
        """Drain and close every model."""
        ...
