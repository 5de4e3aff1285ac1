"""A batch's tensors through shared memory, stacked when they stack.

A batch holds several requests (or, coming back, responses) with the same tensors, e.g. 64
requests of ``input: [1, 512] FP32``. Written one by one, each tensor costs a descriptor to
pickle, a copy in, a copy out and Python work per tensor on both sides, which grew to tens of
microseconds per request. When every item has the same tensor names, each with a first dimension
and the same dtype (not BYTES) and trailing shape in every item, each name is written once,
stacked along the first dimension (``SlabPool.write_stacked``), and the reader slices it back
into per-item views of one copy. Otherwise every tensor travels on its own, all in one slab.

``encode`` -> ``("rows", refs, rows)``: ``rows[i]``, item i's first dimension;
or ``("each", refs, counts)``: ``counts[i]`` consecutive refs are item i's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.python.shm import SlabPool, SlabReader

Items = Sequence[Mapping[str, np.ndarray]]
Decoded = list[list[tuple[str, str, np.ndarray]]]  # per item: (name, datatype, array)


def stacked_rows(items: Sequence[Mapping[str, Any]]) -> list[int] | None:
    """Each item's first dimension when every item holds the same names, each an array of one
    dtype and trailing shape across items with one first dimension within an item, else None."""
    names = list(items[0]) if items else []
    if not names:
        return None
    specs = []
    for name in names:
        array = items[0][name]
        if not isinstance(array, np.ndarray) or array.ndim == 0 or array.dtype.hasobject:
            return None
        specs.append((name, array.dtype, array.shape[1:]))
    rows: list[int] = []
    for item in items:
        if len(item) != len(names):
            return None
        count = -1
        for name, dtype, trailing in specs:
            value = item.get(name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape[1:] != trailing:
                return None
            if value.ndim == 0 or (count >= 0 and value.shape[0] != count):
                return None
            count = value.shape[0]
        rows.append(count)
    return rows


def _rows(items: Items) -> list[int] | None:
    """Each item's first dimension when the items stack (see the module docstring), else None."""
    if len(items) < 2:
        return None
    return stacked_rows(items)


def encode(pool: SlabPool, items: Items) -> tuple[Any, ...]:
    """Write the items' tensors into one slab (see the module docstring).

    Raises: ShmError, ValueError (as ``SlabPool.write``).
    """
    rows = _rows(items)
    if rows is not None:
        names = list(items[0])
        refs = pool.write_stacked([(name, [item[name] for item in items]) for name in names])
        return ("rows", refs, rows)
    flat = [(name, array) for item in items for name, array in item.items()]
    return ("each", pool.write(flat), [len(item) for item in items])


def decode(reader: SlabReader, encoded: tuple[Any, ...]) -> Decoded:
    """The items ``encode`` wrote, copied out of shared memory (the slab is freed)."""
    kind, refs, layout = encoded
    if kind == "rows":
        stacked = reader.read(refs)
        items: Decoded = []
        start = 0
        for count in layout:
            end = start + count
            items.append([(name, datatype, array[start:end]) for name, datatype, array in stacked])
            start = end
        return items
    tensors = reader.read(refs)
    items = []
    start = 0
    for count in layout:
        items.append(tensors[start : start + count])
        start += count
    return items
