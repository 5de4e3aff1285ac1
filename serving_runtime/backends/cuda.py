"""Small CUDA helpers for the GPU backends, on ``cuda-python``'s runtime bindings.

Nothing here imports CUDA at module import: ``import_cudart`` does it on first use, so this
module imports cleanly on a machine without CUDA. The buffer-growth policy
(``grown_capacity``) is a pure function, tested without a GPU.

Public: ``import_cudart(subject)``, ``check(result, what)``, ``grown_capacity(capacity, needed,
ceiling=None)``, ``compute_capability(cudart, device)``, ``device_name(cudart, device)``,
``DeviceBuffer``, ``PinnedBuffer``, ``Stream``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from shipyard.serving_runtime.errors import ModelLoadError

ALIGNMENT = 256  # bytes; TensorRT wants 256-byte aligned I/O addresses (cudaMalloc gives that)
MIN_CAPACITY = 4096  # bytes; tiny buffers are not worth reallocating


def import_cudart(subject: str) -> Any:
    """The ``cuda-python`` runtime module (``cuda.bindings.runtime``, or the older ``cuda.cudart``).

    ``subject`` names what needs it, for the message (e.g. the model file).

    Raises: ModelLoadError saying to install ``shipyard[gpu]`` when cuda-python is missing.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise ModelLoadError(
                f"{subject}: needs a GPU and cuda-python, which is not installed ({exc}); install shipyard[gpu]"
            ) from None
    return cudart


def check(result: Any, what: str) -> Any:
    """Unwrap a cuda-python call's ``(error, value...)`` tuple.

    Returns None, the single value, or a tuple of values.

    Raises: RuntimeError naming the call and the CUDA error when the error is not success.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def grown_capacity(capacity: int, needed: int, ceiling: int | None = None) -> int:
    """The new size of a buffer of ``capacity`` bytes that must hold ``needed`` bytes.

    Policy: keep the buffer when it is big enough (never shrink); otherwise grow to the next
    power of two of ``needed`` (at least ``MIN_CAPACITY`` and at least double the old size, so
    a slowly growing batch reallocates O(log n) times), but never beyond ``ceiling`` (the bytes
    at the optimization profile's largest shape) unless ``needed`` itself is larger. The result
    is a multiple of ``ALIGNMENT``.

    Raises: ValueError for negative sizes.
    """
    if capacity < 0 or needed < 0:
        raise ValueError(f"buffer sizes must be >= 0, got capacity={capacity} needed={needed}")
    if needed <= capacity:
        return capacity
    target = max(MIN_CAPACITY, 2 * capacity, 1 << max(needed - 1, 0).bit_length())
    if ceiling is not None:
        target = min(target, max(ceiling, needed))
    return -(-target // ALIGNMENT) * ALIGNMENT


def compute_capability(cudart: Any, device: int) -> tuple[int, int]:
    """``(major, minor)`` of CUDA device ``device``.

    Raises: RuntimeError when CUDA cannot query the device.
    """
    attr = cudart.cudaDeviceAttr
    major = check(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "get CC major")
    minor = check(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "get CC minor")
    return int(major), int(minor)


def device_name(cudart: Any, device: int) -> str:
    """The device's marketing name (``NVIDIA H100 80GB HBM3``); ``GPU <n>`` when it cannot be read."""
    try:
        props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\x00", 1)[0].decode(errors="replace")
        return str(name)
    except Exception:
        return f"GPU {device}"


class Stream:
    """A CUDA stream of its own (non-blocking with respect to the legacy default stream)."""

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        flags = getattr(cudart, "cudaStreamNonBlocking", 1)
        self.handle: Any = check(cudart.cudaStreamCreateWithFlags(int(flags)), "cudaStreamCreateWithFlags")

    def synchronize(self) -> None:
        """Block until everything queued on the stream has run. Raises: RuntimeError on a CUDA error."""
        check(self._cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            self._cudart.cudaStreamDestroy(self.handle)
            self.handle = None


class _GrowingBuffer:
    """Memory that grows (``grown_capacity``) and is reused; subclasses name the CUDA allocator."""

    _alloc = ""  # cudart function that allocates: returns (error, pointer)
    _release = ""  # cudart function that frees a pointer

    def __init__(self, cudart: Any, ceiling: int | None = None) -> None:
        self._cudart = cudart
        self.ceiling = ceiling
        self.pointer = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> bool:
        """Make room for ``nbytes``. Returns True when the buffer moved (addresses changed).

        Raises: RuntimeError when the allocation fails (out of memory).
        """
        size = grown_capacity(self.capacity, nbytes, self.ceiling)
        if size == self.capacity and self.pointer:
            return False
        self.free()
        size = max(size, ALIGNMENT)
        self.pointer = int(check(getattr(self._cudart, self._alloc)(size), self._alloc))
        self.capacity = size
        return True

    def free(self) -> None:
        if self.pointer:
            getattr(self._cudart, self._release)(self.pointer)
        self.pointer = 0
        self.capacity = 0


class DeviceBuffer(_GrowingBuffer):
    """Device memory (``cudaMalloc``); ``pointer`` is its address."""

    _alloc = "cudaMalloc"
    _release = "cudaFree"


class PinnedBuffer(_GrowingBuffer):
    """Page-locked host memory (``cudaMallocHost``): copies from it to the GPU run asynchronously
    and at full bus speed. Grows like ``DeviceBuffer``; ``view`` exposes it as a numpy array."""

    _alloc = "cudaMallocHost"
    _release = "cudaFreeHost"

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy array over the first bytes of the buffer (valid until the next ``ensure``/``free``).

        Raises: ValueError when the buffer is smaller than the array.
        """
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dtype.itemsize
        if nbytes > self.capacity:
            raise ValueError(f"pinned buffer of {self.capacity} bytes cannot hold {nbytes} bytes")
        if nbytes == 0:
            return np.empty(shape, dtype=dtype)
        raw = (ctypes.c_uint8 * nbytes).from_address(self.pointer)
        return np.frombuffer(memoryview(raw).cast("B"), dtype=dtype, count=count).reshape(shape)
