"""Clients that leave while their fast-path group is queued: the group runs without them.

On the Python path a request whose client goes away (a gRPC call cancelled or past its deadline,
an HTTP connection closed) while it waits in the dynamic batcher's queue leaves the queue, never
runs and counts as CANCELED; one that is already executing runs to its end and is counted by its
outcome (as in Triton). The fast paths (the native gRPC path, ``native_fast``; the REST lane,
``rest_fast``) queue several client requests as ONE request of the batcher (a group), so the same
rule applies per member: ``Leaving.leave`` asks the batcher to take that member out of its queued
group (``InferenceRequest.leave``, ``DynamicBatcher._leave``: its rows leave the group's inputs,
it counts CANCELED, a group left empty leaves the queue and fails with ``RequestCancelled``), and
False means the group is executing (or was never queued: it ran inline), so the member is treated
as executing.

Who notices: C++ (grpc's ``OnCancel``, the call is answered CANCELLED there) hands the call id to
the event loop (``native_grpc``); the lane's protocol sees its connection close
(``connection_lost``). Everything else happens on the event loop.

Answers keep their shape: the native side splits a group's outputs by its requests' rows, so
``expand`` puts the rows of the members that stayed back in place (a left member's rows are zeros,
answered to a call that has ended; C++ drops them), and a Python model's per-request answers get
CANCELLED for a left member (``native_fast_python.answered_each``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from shipyard.serving_runtime.scheduling.api import InferenceRequest


class Leaving:
    """One fast-path group in progress: which of its requests left it while it was queued.

    ``owner``: what the caller finds the group by (a native ``FastBatch``, the lane's list of
    requests); ``rows_of(owner)``: each request's items in the group's order, read only when a
    request leaves."""

    __slots__ = ("_rows", "gone", "owner", "request", "rows_of")

    def __init__(self, request: InferenceRequest, owner: Any, rows_of: Callable[[Any], Sequence[int]]) -> None:
        self.request = request
        self.owner = owner
        self.rows_of = rows_of
        self._rows: list[int] = []
        self.gone: list[bool] | None = None  # None: nobody left

    def leave(self, index: int) -> bool:
        """The client of request ``index`` went away: True when it left the queued group (or had
        already), False when the group is executing or never queued (it runs with it)."""
        hook = self.request.leave
        if hook is None:
            return False
        rows = self._rows = self._rows or list(self.rows_of(self.owner))
        gone = self.gone if self.gone is not None else [False] * len(rows)
        if gone[index]:
            return True
        position = start = 0
        for count, left in zip(rows[:index], gone[:index], strict=True):
            if not left:
                position += 1
                start += count
        if not hook(position, start, start + rows[index]):
            return False
        gone[index] = True
        self.gone = gone
        return True

    def expand(self, results: Mapping[str, np.ndarray], items: int) -> dict[str, np.ndarray]:
        """``results`` of the group without its left requests, with zero rows put back in their
        places so that they split by every request's rows (``items`` in all). An array whose first
        dimension is not the remaining items is kept as it is (the caller refuses it)."""
        assert self.gone is not None
        kept = np.repeat(np.logical_not(self.gone), self._rows)
        out: dict[str, np.ndarray] = {}
        for name, array in results.items():
            if array.ndim == 0 or array.shape[0] != int(kept.sum()):
                out[name] = array
                continue
            full = np.zeros((items, *array.shape[1:]), array.dtype)
            full[kept] = array
            out[name] = full
        return out
