"""Calibration / held-out data: arrays keyed by input name, batch-first.

Public: ``load_arrays(path) -> tuple[dict[str, np.ndarray], np.ndarray | None]`` reads an ``.npz`` (keys =
input names; an optional ``labels`` array) or a ``.npy`` (one input); ``iter_batches(inputs, batch_size)``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from shipyard.components.errors import ComponentError

LABELS_KEY = "labels"


def read_numpy(path: str | Path) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a ``.npy`` file, or the arrays of an ``.npz`` by key (no pickled objects).

    Raises: ComponentError naming the file when it is missing or not a numpy file.
    """
    path = Path(path)
    if not path.is_file():
        raise ComponentError(f"data file not found: {path}: check the path")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ComponentError(
            f"{path} is not a readable numpy file ({' '.join(str(exc).split())[:200]}): save it with "
            "numpy.save (.npy) or numpy.savez (.npz)"
        ) from None


def load_arrays(path: str | Path, input_names: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (by name) and labels (or None) from ``.npz``/``.npy``.

    A ``.npy`` file, or an ``.npz`` with one non-label array, is taken as the single input (named
    ``input_names[0]`` when given). Raises: ComponentError (missing file, no arrays, ragged batch sizes).
    """
    path = Path(path)
    loaded = read_numpy(path)
    arrays = loaded if isinstance(loaded, dict) else {"input": loaded}
    labels = arrays.pop(LABELS_KEY, None)
    if not arrays:
        raise ComponentError(f"{path} holds no input arrays (only {LABELS_KEY!r}); save inputs keyed by input name")
    if len(arrays) == 1 and input_names and next(iter(arrays)) not in input_names:
        arrays = {input_names[0]: next(iter(arrays.values()))}
    flat = [k for k, v in arrays.items() if v.ndim == 0]
    if flat:
        raise ComponentError(f"{path}: {flat} are scalars; save batch-first arrays (first dimension = samples)")
    sizes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or (labels is not None and labels.shape[0] != next(iter(sizes.values()))):
        raise ComponentError(
            f"{path}: arrays have different batch sizes {sizes} (labels: "
            f"{None if labels is None else labels.shape[0]}); all must share the first dimension"
        )
    return arrays, labels


def iter_batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of at most ``batch_size`` rows."""
    total = next(iter(inputs.values())).shape[0]
    for start in range(0, total, batch_size):
        yield {k: np.ascontiguousarray(v[start : start + batch_size]) for k, v in inputs.items()}
