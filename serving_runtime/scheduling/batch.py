"""A formed batch: requests merged along axis 0 and the outputs split back per request.

Requests merge only when every input has the same name set, dtype and non-batch shape (their
*shape key*); the decision guarantees that before a batch is formed. Merging is one
``np.concatenate`` per input; splitting hands each request views (slices) of the batch outputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from shipyard.serving_runtime.errors import BackendError
from shipyard.serving_runtime.scheduling.api import InferenceRequest


def shape_key(inputs: Mapping[str, np.ndarray]) -> Hashable:
    """What must be equal for two batched requests to merge: names, dtypes, non-batch shapes."""
    return tuple((name, array.dtype, array.shape[1:]) for name, array in inputs.items())


def batch_outputs(requests: Sequence[InferenceRequest]) -> tuple[str, ...]:
    """Outputs to ask the backend for: the common selection, or all when any request wants all."""
    first = requests[0].outputs
    if all(r.outputs == first for r in requests):
        return first
    if any(not r.outputs for r in requests):
        return ()
    names: dict[str, None] = {}
    for request in requests:
        names.update(dict.fromkeys(request.outputs))
    return tuple(names)


def merge_inputs(requests: Sequence[InferenceRequest]) -> Mapping[str, np.ndarray]:
    """Concatenate the requests' inputs along axis 0 (one request: its own arrays, no copy)."""
    if len(requests) == 1:
        return requests[0].inputs
    return {name: np.concatenate([r.inputs[name] for r in requests], axis=0) for name in requests[0].inputs}


def split_outputs(
    outputs: Mapping[str, np.ndarray], requests: Sequence[InferenceRequest], total: int
) -> list[dict[str, np.ndarray]]:
    """Give each request its rows (views) of the requested outputs.

    Raises: BackendError when an output's first dimension is not the batch size ``total``.
    """
    if len(requests) == 1:
        wanted = requests[0].outputs
        if not wanted or len(wanted) == len(outputs):
            return [dict(outputs)]
        return [{name: outputs[name] for name in wanted}]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BackendError(
                f"output {name!r} has shape {list(array.shape)} but the batch has {total} items; "
                "a batched model must return the batch as the first dimension of every output"
            )
    results: list[dict[str, np.ndarray]] = []
    start = 0
    for request in requests:
        stop = start + request.batch_size
        names = request.outputs or outputs.keys()
        results.append({name: outputs[name][start:stop] for name in names})
        start = stop
    return results
