"""Read a data set to score: Parquet, CSV or NumPy ``.npz``, from a local path or any fsspec URL.

Public: ``open_dataset(uri, fmt=None) -> Dataset``; ``Dataset.parts(part_rows)`` yields
``(index, table)`` where part ``index`` holds rows ``[index * part_rows, (index + 1) * part_rows)`` of the
file in its order (the last one may be shorter), as a ``pyarrow.Table``. Parquet and CSV are streamed
(record batches, re-cut into parts); ``.npz`` is loaded whole (the format has no streaming read).

``Dataset.fingerprint`` (size and modification stamp of the file) tells a resumed run that the file did
not change since the output was started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shipyard.components.score.errors import ScoreError

FORMATS = ("parquet", "csv", "npz")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npz": "npz"}
_STAMP_KEYS = ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated", "created")


def url_to_fs(uri: str, what: str) -> tuple[Any, str]:
    """(fsspec filesystem, path) for a local path or URL.

    Raises: ScoreError naming the URI when fsspec does not know its protocol or cannot set it up.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)  # type: ignore[no-any-return]
    except (ValueError, ImportError) as exc:
        protocol = uri.split("://", 1)[0] if "://" in uri else uri
        raise ScoreError(
            f"{what} {uri!r}: cannot open protocol {protocol!r} ({str(exc).splitlines()[0]}); use a local path "
            "or an fsspec URL such as s3://bucket/key, gs://..., file:///..."
        ) from None


def detect_format(uri: str, fmt: str | None) -> str:
    """The format named by ``fmt`` or by the file's suffix.

    Raises: ScoreError for an unknown format or suffix.
    """
    if fmt:
        if fmt not in FORMATS:
            raise ScoreError(f"--format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = os.path.splitext(uri.rstrip("/"))[1].lower()
    if suffix not in _SUFFIXES:
        raise ScoreError(
            f"cannot tell the format of {uri!r} from its suffix; name it with --format ({', '.join(FORMATS)})"
        )
    return _SUFFIXES[suffix]


@dataclass
class Dataset:
    """An input file opened for scoring (nothing read yet beyond its metadata)."""

    uri: str
    format: str
    fs: Any
    path: str
    fingerprint: dict[str, Any]
    total_rows: int | None  # exact for Parquet and .npz; an estimate (lines - 1) for CSV
    _npz: dict[str, Any] | None = field(default=None, repr=False)

    def parts(self, part_rows: int) -> Iterator[tuple[int, Any]]:
        """``(index, pyarrow.Table)`` for each part of ``part_rows`` rows, in file order.

        Raises: ScoreError when the file cannot be parsed.
        """
        if part_rows <= 0:
            raise ScoreError(f"part rows must be positive, got {part_rows}")
        try:
            if self.format == "npz":
                yield from _npz_parts(self._load_npz(), part_rows)
            else:
                yield from _recut(self._batches(), part_rows)
        except ScoreError:
            raise
        except (OSError, ValueError) as exc:
            raise ScoreError(f"cannot read {self.format} data set {self.uri}: {_first_line(exc)}") from None

    def _batches(self) -> Iterator[Any]:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        with self.fs.open(self.path, "rb") as fh:
            if self.format == "parquet":
                yield from pq.ParquetFile(fh).iter_batches(batch_size=65536)
            else:
                yield from pacsv.open_csv(fh)

    def _load_npz(self) -> dict[str, Any]:
        if self._npz is None:
            import numpy as np

            with self.fs.open(self.path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
                self._npz = {name: data[name] for name in data.files}
        return self._npz


def open_dataset(uri: str, fmt: str | None = None) -> Dataset:
    """Open ``uri`` (checks that it exists and reads its row count where the format has one).

    Raises: ScoreError for a bad URI, a missing file, an unknown format or an unreadable file.
    """
    fmt = detect_format(uri, fmt)
    fs, path = url_to_fs(uri, "data set")
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ScoreError(f"data set {uri} not found; check the path (local paths and fsspec URLs work)") from None
    except Exception as exc:  # object stores raise their own errors (credentials, permissions)
        raise ScoreError(f"cannot open data set {uri}: {_first_line(exc)}") from None
    if info.get("type") == "directory":
        raise ScoreError(f"data set {uri} is a directory; name one .parquet, .csv or .npz file")
    stamp = next((str(info[k]) for k in _STAMP_KEYS if info.get(k) is not None), "")
    fingerprint = {"size": int(info.get("size") or 0), "stamp": stamp}
    dataset = Dataset(uri, fmt, fs, path, fingerprint, None)
    try:
        dataset.total_rows = _count_rows(dataset)
    except (OSError, ValueError) as exc:
        raise ScoreError(f"cannot read {fmt} data set {uri}: {_first_line(exc)}") from None
    return dataset


def _count_rows(dataset: Dataset) -> int:
    if dataset.format == "parquet":
        import pyarrow.parquet as pq

        with dataset.fs.open(dataset.path, "rb") as fh:
            return int(pq.ParquetFile(fh).metadata.num_rows)
    if dataset.format == "npz":
        arrays = dataset._load_npz()
        lengths = {name: (a.shape[0] if a.ndim else 0) for name, a in arrays.items()}
        if not arrays or len(set(lengths.values())) != 1:
            raise ScoreError(
                f"data set {dataset.uri}: the .npz arrays must share their first (row) dimension; got {lengths}"
            )
        return next(iter(lengths.values()))
    lines = 0
    with dataset.fs.open(dataset.path, "rb") as fh:
        while block := fh.read(1 << 22):
            lines += block.count(b"\n")
            last = block
        if lines and not last.endswith(b"\n"):
            lines += 1
    return max(lines - 1, 0)  # an estimate for the ETA: quoted fields may hold newlines


def _recut(batches: Iterator[Any], part_rows: int) -> Iterator[tuple[int, Any]]:
    """Re-cut record batches of any size into tables of exactly ``part_rows`` rows (the last shorter)."""
    import pyarrow as pa

    pending: list[Any] = []
    pending_rows = 0
    index = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= part_rows:
            table = pa.Table.from_batches(pending)
            yield index, table.slice(0, part_rows)
            index += 1
            rest = table.slice(part_rows)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield index, pa.Table.from_batches(pending)


def _npz_parts(arrays: dict[str, Any], part_rows: int) -> Iterator[tuple[int, Any]]:
    """Tables of ``part_rows`` rows from equal-length arrays; an array of rank > 1 becomes a list column."""
    import pyarrow as pa

    rows = next(iter(arrays.values())).shape[0] if arrays else 0
    for index, start in enumerate(range(0, rows, part_rows)):
        columns = {name: numpy_to_arrow(array[start : start + part_rows]) for name, array in arrays.items()}
        yield index, pa.table(columns)


def numpy_to_arrow(array: Any) -> Any:
    """A pyarrow array for ``array``: rank 1 as is, rank > 1 as a fixed-size list of each row flattened.

    Numbers are wrapped without a copy and without ``pa.array``, whose first call imports pandas (0.2-0.3 s of
    CPU, a tenth of a short scoring run's time)."""
    import numpy as np
    import pyarrow as pa

    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.kind in "iuf" and flat.dtype.isnative:
        values = pa.Array.from_buffers(pa.from_numpy_dtype(flat.dtype), len(flat), [None, pa.py_buffer(flat)])
    else:
        values = pa.array(flat)
    if array.ndim <= 1:
        return values
    return pa.FixedSizeListArray.from_arrays(values, int(np.prod(array.shape[1:])))


def arrow_to_numpy(array: Any) -> Any:
    """``array``'s values as a NumPy array: numbers without nulls as a read-only view of Arrow's buffer (no
    pandas import, see ``numpy_to_arrow``), anything else through ``to_numpy`` (nulls, strings, booleans)."""
    import numpy as np
    import pyarrow as pa

    kind = array.type
    if array.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        code = "f" if pa.types.is_floating(kind) else ("i" if pa.types.is_signed_integer(kind) else "u")
        width = kind.bit_width // 8
        return np.frombuffer(array.buffers()[1], dtype=f"{code}{width}", count=len(array), offset=array.offset * width)
    return array.to_numpy(zero_copy_only=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
