"""Tensors between the server and a Python model's process, through files in ``/dev/shm``.

Each side owns a ``SlabPool``: memory-mapped files it creates under the shared-memory directory
(``/dev/shm``; ``SHIPYARD_PYTHON_SHM_DIR`` overrides it). A message's tensors are written into one
free slab, one after the other; the message itself (sent over the control socket) carries only
their descriptors: name, datatype, shape, slab, offset, byte size. The receiver maps the slab (once;
mappings are cached), copies the tensors out and marks the slab free again by clearing its first
byte, so the owner can reuse it without another message. Nothing is pickled but the descriptors.

Space is reserved with ``posix_fallocate`` when a slab is created, so a full or too-small
``/dev/shm`` is an ``ShmError`` naming the sizes and the fix, not a SIGBUS while writing (the
failure Triton users meet as server#3678).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Sequence

import numpy as np

from shipyard.serving_runtime.datatypes import (
    deserialize_bytes_tensor,
    numpy_to_triton,
    serialize_bytes_tensor,
    triton_to_numpy,
)

SHM_DIR_ENV = "SHIPYARD_PYTHON_SHM_DIR"
DEFAULT_SHM_DIR = "/dev/shm"
MIN_SLAB_BYTES = 1 << 20  # 1 MiB, as Triton's shm-default-byte-size
_HEADER = 64  # byte 0: 1 while the receiver has not copied the slab out
_ALIGN = 64
SHM_FIX = (
    "the Python backend passes tensors through shared memory; give the server a bigger /dev/shm "
    "(docker run --shm-size=1g; Kubernetes: an emptyDir volume with medium: Memory mounted at /dev/shm)"
)


class ShmError(RuntimeError):
    """Shared memory could not be reserved (``/dev/shm`` full or too small)."""


# Where one tensor lies: (name, datatype, shape, slab, offset, nbytes); ``slab`` is the file name,
# ``offset``/``nbytes`` its bytes in it. A plain tuple: it pickles several times faster than a
# NamedTuple (no class to look up and call per descriptor), and a batch carries many.
TensorRef = tuple[str, str, tuple[int, ...], str, int, int]


_DATATYPES = {np.dtype(t): numpy_to_triton(np.dtype(t)) for t in (
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
    np.float16, np.float32, np.float64,
)}  # fmt: skip


def shm_dir() -> str:
    return os.environ.get(SHM_DIR_ENV, DEFAULT_SHM_DIR)


def _round(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Slab:
    def __init__(self, path: str, size: int) -> None:
        self.name = os.path.basename(path)
        self.size = size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                os.close(fd)
                fd = -1
                os.unlink(path)
                free = _free_bytes(os.path.dirname(path))
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise ShmError(
                        f"shared memory is full: cannot reserve {size / 2**20:.1f} MiB in {os.path.dirname(path)} "
                        f"({free / 2**20:.1f} MiB free); {SHM_FIX}"
                    ) from None
                raise ShmError(f"cannot reserve shared memory {path}: {exc.strerror}; {SHM_FIX}") from None
            self.mm = mmap.mmap(fd, size)
        finally:
            if fd >= 0:
                os.close(fd)
        self.view = memoryview(self.mm)

    def free(self) -> bool:
        return self.view[0] == 0


def _free_bytes(directory: str) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class SlabPool:
    """The slabs one side writes into. Thread-safe. Files are named ``<prefix>-<n>``."""

    def __init__(self, prefix: str, directory: str | None = None) -> None:
        self.directory = directory or shm_dir()
        self.prefix = prefix
        self._slabs: list[_Slab] = []
        self._lock = threading.Lock()
        self._count = 0

    def _take(self, nbytes: int) -> _Slab:
        with self._lock:
            for slab in self._slabs:
                if slab.size >= nbytes and slab.free():
                    slab.view[0] = 1
                    return slab
            size = max(MIN_SLAB_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())
            self._count += 1
            slab = _Slab(os.path.join(self.directory, f"{self.prefix}-{self._count}"), size)
            slab.view[0] = 1
            self._slabs.append(slab)
            return slab

    def write(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[TensorRef]:
        """Copy ``(name, array)`` pairs into one free slab; return their descriptors.

        Raises: ShmError when ``/dev/shm`` cannot hold a new slab; ValueError for an array of a
        dtype the protocol has no datatype for.
        """
        return self.write_stacked([(name, [array]) for name, array in tensors])

    def write_stacked(self, groups: Sequence[tuple[str, Sequence[np.ndarray]]]) -> list[TensorRef]:
        """``write`` where each tensor is the arrays of its group stacked along their first
        dimension (``np.concatenate`` straight into the slab: one copy, one descriptor). A group
        of several arrays must share dtype and trailing shape, and not hold BYTES.

        Raises: as ``write``.
        """
        if not groups:
            return []
        encoded: list[tuple[str, str, tuple[int, ...], memoryview | bytes | Sequence[np.ndarray]]] = []
        total = _HEADER
        for name, arrays in groups:
            if len(arrays) == 1:
                array = np.asarray(arrays[0])
                datatype = _DATATYPES.get(array.dtype) or numpy_to_triton(array.dtype)
                data: memoryview | bytes | Sequence[np.ndarray]
                if datatype == "BYTES":
                    data = serialize_bytes_tensor(array)
                else:
                    data = np.ascontiguousarray(array).data.cast("B") if array.size else b""
                encoded.append((name, datatype, array.shape, data))
                total += _round(len(data))
                continue
            first = arrays[0]
            shape = (sum(int(a.shape[0]) for a in arrays), *first.shape[1:])
            encoded.append((name, numpy_to_triton(first.dtype), shape, arrays))
            total += _round(int(np.prod(shape)) * first.dtype.itemsize)
        slab = self._take(total)
        refs: list[TensorRef] = []
        offset = _HEADER
        view, slab_name = slab.view, slab.name
        for name, datatype, shape, data in encoded:
            if isinstance(data, (memoryview, bytes)):
                size = len(data)
                view[offset : offset + size] = data
            else:
                dtype = data[0].dtype
                size = int(np.prod(shape)) * dtype.itemsize
                target = np.frombuffer(slab.mm, dtype=dtype, count=size // dtype.itemsize, offset=offset)
                np.concatenate(data, out=target.reshape(shape))
            refs.append((name, datatype, shape, slab_name, offset, size))
            offset += _round(size)
        return refs

    def close(self) -> None:
        """Unmap and remove this pool's files."""
        with self._lock:
            for slab in self._slabs:
                slab.view.release()
                try:
                    slab.mm.close()
                except BufferError:  # a view still refers to it; the mapping goes with the process
                    pass
                try:
                    os.unlink(os.path.join(self.directory, slab.name))
                except FileNotFoundError:
                    pass
            self._slabs.clear()


class SlabReader:
    """Maps the other side's slabs (cached by name) and copies tensors out of them."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or shm_dir()
        self._maps: dict[str, mmap.mmap] = {}
        self._bytes: dict[str, np.ndarray] = {}  # a uint8 array over each mapping (cheap slicing)
        self._lock = threading.Lock()

    def _map(self, name: str) -> np.ndarray:
        array = self._bytes.get(name)
        if array is None:
            with self._lock:
                array = self._bytes.get(name)
                if array is None:
                    fd = os.open(os.path.join(self.directory, name), os.O_RDWR)
                    try:
                        mm = mmap.mmap(fd, 0)
                    finally:
                        os.close(fd)
                    self._maps[name] = mm
                    array = self._bytes[name] = np.frombuffer(mm, dtype=np.uint8)
        return array

    def read(self, refs: Sequence[TensorRef]) -> list[tuple[str, str, np.ndarray]]:
        """Copies of the tensors ``refs`` describe, as ``(name, datatype, array)``; frees their slab."""
        return self.read_many([refs])[0]

    def read_many(self, groups: Sequence[Sequence[TensorRef]]) -> list[list[tuple[str, str, np.ndarray]]]:
        """``read`` for several messages' tensors (which may share slabs); frees the slabs after all."""
        slabs: set[str] = set()
        results = [self._copy(refs, slabs) for refs in groups]
        for name in slabs:
            self._bytes[name][0] = 0
        return results

    def _copy(self, refs: Sequence[TensorRef], slabs: set[str]) -> list[tuple[str, str, np.ndarray]]:
        result: list[tuple[str, str, np.ndarray]] = []
        for name, datatype, shape, slab, offset, nbytes in refs:
            raw = self._map(slab)[offset : offset + nbytes]
            slabs.add(slab)
            if datatype == "BYTES":
                count = int(np.prod(shape)) if shape else 1
                array = deserialize_bytes_tensor(raw.tobytes(), count).reshape(shape)
            else:
                array = raw.view(triton_to_numpy(datatype)).reshape(shape).copy()
            result.append((name, datatype, array))
        return result

    def forget(self, prefix: str) -> None:
        """Drop the mappings of slabs whose names start with ``prefix`` (their owner is gone)."""
        with self._lock:
            for name in [n for n in self._maps if n.startswith(prefix)]:
                self._bytes.pop(name, None)
                try:
                    self._maps.pop(name).close()
                except BufferError:
                    pass

    def close(self) -> None:
        self.forget("")


def remove_files(prefix: str, directory: str | None = None) -> None:
    """Remove every slab file named ``<prefix>*`` (after a process died without cleaning up)."""
    directory = directory or shm_dir()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
