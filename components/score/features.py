"""The model's view of a data set: which columns feed which input, and the predictions as columns.

Public: ``TensorInfo``, ``ModelInfo``, ``plan_inputs(info, columns, key) -> dict[input, column | None]``,
``model_inputs(table, info, plan) -> dict[str, np.ndarray]``, ``keys_of(table, key, first_row)``,
``predictions_table(keys, key_name, outputs, info) -> pyarrow.Table``.

Rules, in order, for each model input:

1. a column named as the input feeds it: a list column (one list per row) or a scalar column;
2. otherwise, when the model has exactly one input, every column but the key feeds it, in file order
   (a scalar column is one feature, a list column its values: a CSV of 512 numeric columns, or one list
   column of 512 values under any name, feeds an input of dims ``[512]``).

Rows are reshaped to the input's dims and cast to its datatype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.components.score.errors import ScoreError

ROW_KEY = "row"  # the key column written when the data set names none: the row's number in the file
ALL_OTHER_COLUMNS = None  # plan entry: every non-key column, in file order


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: Triton datatype (``FP32``) and dims of one row (no batch dim)."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def row_size(self) -> int:
        return int(np.prod(self.dims)) if self.dims else 1

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {list(self.dims)}"


@dataclass(frozen=True)
class ModelInfo:
    """What the scorer needs to know about a model (read from its config)."""

    name: str
    version: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    priority_levels: int = 0
    background_share_rows: int = 0  # the server's background level: rows it mixes into a real-time batch

    @property
    def default_batch_size(self) -> int:
        """Rows per request: the largest preferred batch size, else ``max_batch_size`` (the throughput when the
        server is free; ``--batch-size`` at most ``background_share_rows`` lets rows join real-time batches)."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)

    def default_max_inflight(self, batch_size: int) -> int:
        """Requests in flight: enough to fill ``max_batch_size`` when the server is free, at least 4."""
        return max(4, -(-self.max_batch_size // batch_size))

    @property
    def lowest_priority(self) -> int:
        """The lowest priority level of ``dynamic_batching`` (0 = the model has no levels)."""
        return self.priority_levels


def plan_inputs(info: ModelInfo, columns: Sequence[str], key: str | None) -> dict[str, str | None]:
    """Which column feeds each model input (``None``: all non-key columns).

    Raises: ScoreError naming the missing input and the columns there are.
    """
    plan: dict[str, str | None] = {}
    for tensor in info.inputs:
        if tensor.name in columns:
            plan[tensor.name] = tensor.name
        elif len(info.inputs) == 1 and [c for c in columns if c != key]:
            plan[tensor.name] = ALL_OTHER_COLUMNS
        else:
            raise ScoreError(
                f"model input {tensor.describe()} has no column in the data set (columns: {', '.join(columns)}); "
                "name a column (or .npz array) after the input"
            )
    return plan


def _column_rows(column: Any, name: str, width: int | None) -> np.ndarray:
    """A column's values as an array of shape ``(rows, width)`` (lists flattened; ``width`` None: any, the
    same for every row).

    Raises: ScoreError when the lists do not hold ``width`` values per row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from shipyard.components.score.dataset import arrow_to_numpy

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(column)
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        return arrow_to_numpy(column).reshape(rows, 1)
    flat = arrow_to_numpy(pc.list_flatten(column))
    lengths = arrow_to_numpy(pc.list_value_length(column))
    wanted = width if width is not None else (int(lengths[0]) if rows else 0)
    if rows and (lengths != wanted).any():
        raise ScoreError(
            f"column {name!r} holds lists of {int(lengths.min())}..{int(lengths.max())} values per row; "
            f"{wanted} are needed in every row"
        )
    return flat.reshape(rows, wanted)


def model_inputs(table: Any, info: ModelInfo, plan: Mapping[str, str | None], key: str | None) -> dict[str, np.ndarray]:
    """The model's inputs for the rows of ``table``: ``(rows, *dims)`` arrays of each input's datatype.

    Raises: ScoreError when a column does not fit its input (size, or a value that is not a number).
    """
    from shipyard.serving_runtime.datatypes import triton_to_numpy

    arrays: dict[str, np.ndarray] = {}
    for tensor in info.inputs:
        column = plan[tensor.name]
        if column is ALL_OTHER_COLUMNS:
            names = [c for c in table.column_names if c != key]
            parts = [_column_rows(table.column(c), c, None) for c in names]
            rows = np.concatenate(parts, axis=1) if parts else np.empty((table.num_rows, 0))
            if rows.shape[1] != tensor.row_size:
                raise ScoreError(
                    f"input {tensor.describe()} needs {tensor.row_size} values per row; the data set's columns but "
                    f"the key ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) hold {rows.shape[1]}"
                )
        else:
            rows = _column_rows(table.column(column), column, tensor.row_size)
            if rows.shape[1] != tensor.row_size:
                raise ScoreError(
                    f"column {column!r} has {rows.shape[1]} value(s) per row; input {tensor.describe()} "
                    f"needs {tensor.row_size}"
                )
        dtype = triton_to_numpy(tensor.datatype)
        try:
            arrays[tensor.name] = rows.astype(dtype, copy=False).reshape(table.num_rows, *tensor.dims)
        except (ValueError, TypeError) as exc:
            raise ScoreError(f"input {tensor.describe()}: the data set's values do not convert: {exc}") from None
    return arrays


def keys_of(table: Any, key: str | None, first_row: int) -> Any:
    """The key column of ``table`` (a pyarrow array), or row numbers from ``first_row`` when ``key`` is None.

    Raises: ScoreError when the key column is missing.
    """

    if key is None:
        from shipyard.components.score.dataset import numpy_to_arrow

        return numpy_to_arrow(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
    if key not in table.column_names:
        raise ScoreError(f"key column {key!r} is not in the data set (columns: {', '.join(table.column_names)})")
    return table.column(key).combine_chunks()


def predictions_table(keys: Any, key_name: str, outputs: Mapping[str, np.ndarray], info: ModelInfo) -> Any:
    """A table: the key column, then one column per model output (a fixed-size list when a row has several values)."""
    import pyarrow as pa

    from shipyard.components.score.dataset import numpy_to_arrow

    columns: dict[str, Any] = {key_name: keys}
    for tensor in info.outputs:
        if tensor.name not in outputs:
            continue
        array = outputs[tensor.name]
        if array.ndim > 1 and int(np.prod(array.shape[1:])) == 1:
            array = array.reshape(-1)
        columns[tensor.name] = numpy_to_arrow(array)
    return pa.table(columns)
