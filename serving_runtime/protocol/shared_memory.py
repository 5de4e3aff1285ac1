"""Triton's system shared-memory extension: clients register POSIX shared-memory regions, then
name them in an input's or output's parameters (``shared_memory_region``,
``shared_memory_byte_size``, optional ``shared_memory_offset``) instead of sending the bytes.

- A region is ``mmap``-ed once at registration (the whole object, so any offset works) and read
  without copying: an input becomes a read-only numpy view of the mapping.
- A request binds its regions when it starts (``SharedMemoryRegistry.bind``): the binding holds the
  mapping, so unregistering a region while requests use it is safe. The region leaves the registry
  at once (new requests get "Unable to find"), and the mapping is unmapped when the last request
  holding it has finished (reference counting, as Triton's shared pointers).
- Messages and statuses are Triton 2.51's (``src/shared_memory_manager.cc``).
- CUDA shared memory needs a GPU build: registering answers Triton's "GPUs not supported" error.

Everything here runs on the event loop thread (both gRPC frontends and REST hand requests to it),
so the registry needs no lock.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shipyard.serving_runtime.errors import InvalidArgument, ServingError
from shipyard.serving_runtime.protocol.tensors import decode_raw, raw_bytes
from shipyard.serving_runtime.protocol.types import DecodedRequest, EncodedOutput, ShmRef

SHM_ROOT = Path("/dev/shm")
REGION, BYTE_SIZE, OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"


class RegionNotFound(ServingError):
    """An unknown shared-memory region (Triton: TRITONSERVER_ERROR_NOT_FOUND)."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    reason = "REJECTED"


class RegionExists(ServingError):
    """A region name registered twice (Triton: TRITONSERVER_ERROR_ALREADY_EXISTS; 400 over REST)."""

    http_status = 400
    grpc_code = "ALREADY_EXISTS"
    reason = "REJECTED"


class RegionUnavailable(ServingError):
    """The shared-memory object cannot be opened: the client named a key that does not exist (or that
    this process may not open). Triton answers INTERNAL; it is the client's error, so 400 / INVALID_ARGUMENT
    (a fuzzer found the 500s; issue 19), with Triton's message."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "REJECTED"


NO_DATA = np.empty(0, dtype=np.uint8)  # an input's data until its region is read


def shm_parameters(ref: ShmRef) -> dict[str, object]:
    """The parameters that describe an output written to shared memory, as Triton answers them."""
    params: dict[str, object] = {REGION: ref.region, BYTE_SIZE: ref.byte_size}
    if ref.offset:
        params[OFFSET] = ref.offset
    return params


def parse_ref(what: str, params: Mapping[str, object]) -> ShmRef | None:
    """The shared-memory reference in an input's or output's parameters; None when it has none.

    Raises: InvalidArgument naming ``what`` when only one of region and byte size is given, or a
    value has the wrong type.
    """
    region = params.get(REGION)
    size = params.get(BYTE_SIZE)
    if region is None and size is None:
        return None
    if region is None or size is None:
        raise InvalidArgument(
            f"{what}: '{REGION}' and '{BYTE_SIZE}' must be given together (and optionally '{OFFSET}')"
        )
    offset = params.get(OFFSET, 0)
    if not isinstance(region, str):
        raise InvalidArgument(f"{what}: '{REGION}' must be a string, got {region!r}")
    for key, value in ((BYTE_SIZE, size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{what}: '{key}' must be a non-negative integer, got {value!r}")
    return ShmRef(region, int(size), int(offset))  # type: ignore[call-overload]


@dataclass
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def window(self, ref: ShmRef) -> memoryview:
        """The bytes ``ref`` names. Raises: InvalidArgument (Triton's words) when out of bounds."""
        if ref.offset >= self.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{self.name}'")
        if ref.offset + ref.byte_size > self.byte_size:
            raise InvalidArgument(f"Invalid offset + byte size for shared memory region: '{self.name}'")
        start = self.offset + ref.offset
        return memoryview(self.mapping)[start : start + ref.byte_size]


@dataclass
class ShmBinding:
    """The regions one request uses, held until it has answered: its outputs' windows by name."""

    outputs: dict[str, tuple[ShmRef, memoryview]]

    def write(self, encoded: Sequence[EncodedOutput]) -> list[EncodedOutput]:
        """Copy the outputs that go to shared memory into their windows; those come back marked
        with ``shm`` (the encoders then send their parameters instead of data).

        Raises: InvalidArgument when an output does not fit its window.
        """
        result: list[EncodedOutput] = []
        for out in encoded:
            target = self.outputs.get(out.name)
            if target is None:
                result.append(out)
                continue
            ref, window = target
            data = raw_bytes(out.data, out.datatype)
            size = len(data)
            if size > len(window):
                raise InvalidArgument(
                    f"shared memory size specified with the request for output '{out.name}' ({len(window)} bytes) "
                    f"should be at least {size} bytes to hold the results"
                )
            window[:size] = data
            result.append(replace(out, shm=ShmRef(ref.region, size, ref.offset)))
        return result


class SharedMemoryRegistry:
    """The server's registered system shared-memory regions."""

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the shared-memory object ``key``.

        Raises: RegionExists, RegionUnavailable (no such object), InvalidArgument (bad values,
        or the window is outside the object).
        """
        if not name:
            raise InvalidArgument("a shared memory region needs a non-empty name")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"shared memory region '{name}': '{field}' must be a non-negative integer")
        if not isinstance(key, str) or not key.strip("/") or "/" in key.strip("/"):
            raise InvalidArgument(f"shared memory region '{name}': 'key' must name a POSIX shared memory object")
        if name in self._regions:
            raise RegionExists(f"shared memory region '{name}' already in manager")
        path = self._root / key.strip("/")
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            raise RegionUnavailable(f"Unable to open shared memory region: '{key}'") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size or size == 0:
                raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args")
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._regions[name] = _Region(name, key, offset, byte_size, mapping)

    def status(self, name: str = "") -> list[dict[str, object]]:
        """Every region, or the one named. Raises: RegionNotFound for an unknown name."""
        if not name:
            return [region.status() for region in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def unregister(self, name: str = "") -> None:
        """Forget one region (unknown names are fine, as in Triton) or all. Requests in flight keep
        their windows; the mapping goes when the last of them finishes."""
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"Unable to find shared memory region: '{name}'")
        return region

    def bind(self, decoded: DecodedRequest) -> ShmBinding | None:
        """Read the inputs that name a region (replacing their data with a read-only view) and hold
        the outputs' windows. None when the request uses no shared memory.

        Raises: RegionNotFound, InvalidArgument (out of bounds, size that does not fit the shape).
        """
        outputs = {out.name: out.shm for out in decoded.outputs if out.shm is not None}
        if not outputs and not any(tensor.shm is not None for tensor in decoded.inputs):
            return None
        for tensor in decoded.inputs:
            if tensor.shm is not None:
                window = self._region(tensor.shm.region).window(tensor.shm)
                array = decode_raw(tensor.name, tensor.datatype, tensor.shape, window)
                if isinstance(array, np.ndarray) and array.flags.writeable:
                    array.flags.writeable = False
                tensor.data = array
        return ShmBinding({name: (ref, self._region(ref.region).window(ref)) for name, ref in outputs.items()})


def cuda_unsupported(name: str) -> ServingError:
    """Triton's answer to CUDA shared memory on a server without GPU support."""
    return InvalidArgument(f"failed to register CUDA shared memory region: '{name}', GPUs not supported")
