"""Protocol-neutral forms of an inference request and its outputs, shared by both codecs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
