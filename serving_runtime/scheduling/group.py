"""A group of client requests that runs as one request of the scheduler, but whose backend sees
each request on its own (Python models on the native gRPC fast path, ``protocol/native_fast_python``).

The scheduler queues and batches a ``RequestGroup`` like any request (its inputs are the members'
rows, concatenated; statistics count each member, ``group_arrivals_ns``). A backend that takes
requests as a list (``execute_requests``, Python models) runs ``members`` instead, one
``InferenceRequest`` per client request with its own rows, id and requested outputs, and answers
the group with ``GroupResults``: each member's own outcome, and, when every member succeeded with
plain outputs whose first dimension is its row count, the outputs joined along the batch dimension
(``joined``), which the native side splits and serializes per request itself.

``Leaving``: which members of a fast-path group left it while it was queued because their
clients went away (``protocol/fast_leave.py``); ``drop_member`` takes one out of the group
request (``DynamicBatcher._leave``, which an ensemble's step groups use too: ``ensemble_group._leave``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.python.batch_codec import stacked_rows
from shipyard.serving_runtime.errors import ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest


@dataclass
class RequestGroup(InferenceRequest):
    """See the module docstring. ``members``: one request per client request, in order.
    ``formed``: the group is a batch already (the fast path's: an idle instance starts it at
    once); False (an ensemble step's): it waits, as a request does, for the others that arrive on
    the same turn of the event loop (the other groups of the step before's batch) to join it.
    ``lone``: ``InferenceRequest``'s, set for an ensemble's step at c=1."""

    members: list[InferenceRequest] = field(default_factory=list)
    formed: bool = True


def make_group(
    inputs: dict[str, np.ndarray],
    rows: Sequence[int],
    ids: Sequence[str],
    requested: Sequence[tuple[str, ...]],
    arrivals_ns: Sequence[int],
    outputs: tuple[str, ...],
) -> RequestGroup:
    """The group of the client requests whose rows, one after another, make up ``inputs``."""
    members = []
    start = 0
    for count, request_id, names in zip(rows, ids, requested, strict=True):
        end = start + count
        members.append(
            InferenceRequest(
                {name: array[start:end] for name, array in inputs.items()}, names, count, request_id=request_id
            )
        )
        start = end
    return RequestGroup(inputs, outputs, batch_size=start, group_arrivals_ns=arrivals_ns, members=members)


def drop_member(request: InferenceRequest, position: int, start: int, stop: int) -> int:
    """Take the client request at ``position`` of a queued group request (rows ``start:stop`` of its
    inputs; a ``RequestGroup``'s member too) out, its client having gone away; its arrival time.
    A group left empty keeps its inputs (it never runs)."""
    arrivals = list(request.group_arrivals_ns or ())
    arrival = arrivals.pop(position)
    request.group_arrivals_ns = arrivals
    if arrivals:
        request.inputs = {name: np.concatenate((a[:start], a[stop:])) for name, a in request.inputs.items()}
        request.batch_size -= stop - start
    if isinstance(request, RequestGroup):
        request.members.pop(position)
    return arrival


class GroupResults(dict):  # type: ignore[type-arg]
    """A group's outcome (see the module docstring): the joined outputs (this dict, when ``joined``)
    and ``parts``, each member's outputs or its own error."""

    joined: bool = False
    parts: list[Any] = []


def group_results(group: RequestGroup, parts: list[Any]) -> GroupResults | ServingError:
    """The group's answer from its members' results. One error shared by every member (the
    whole call failed) is the group's error, so statistics count the group as failed."""
    first = parts[0]
    if isinstance(first, ServingError) and not getattr(first, "counts_as_success", False):
        if all(type(p) is type(first) and p.message == first.message for p in parts):
            return first
    joined = _join(group, parts)
    result = GroupResults(joined or {})
    result.joined = joined is not None
    result.parts = parts
    return result


def _join(group: RequestGroup, parts: list[Any]) -> dict[str, np.ndarray] | None:
    """Every member's outputs joined along the first dimension, or None when they do not join
    (an error, response parameters, other names, dtypes or trailing shapes, rows that differ)."""
    if any(not isinstance(part, dict) or getattr(part, "parameters", None) for part in parts):
        return None
    if stacked_rows(parts) != [member.batch_size for member in group.members]:
        return None
    for part, member in zip(parts, group.members, strict=True):
        if any(name not in part for name in member.outputs):  # that member fails on its own
            return None
    first, names = parts[0], list(parts[0])
    if len(parts) == 1:
        return dict(first)
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def run_members(execute: Callable[[list[Any]], list[Any]], requests: Sequence[Any]) -> list[Any]:
    """``execute`` (a backend's ``execute_requests`` over plain requests) over ``requests`` with
    each ``RequestGroup`` replaced by its members; each group answered with ``group_results``."""
    flat, spans = expand(requests)
    return regroup(requests, spans, execute(flat))


def expand(requests: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """The requests with each group replaced by its members, and how many each stands for
    (0: a plain request)."""
    flat: list[Any] = []
    spans: list[int] = []
    for request in requests:
        if isinstance(request, RequestGroup):
            flat.extend(request.members)
            spans.append(len(request.members))
        else:
            flat.append(request)
            spans.append(0)
    return flat, spans


def regroup(requests: Sequence[Any], spans: list[int], results: list[Any]) -> list[Any]:
    """``results`` of the expanded requests, one per original request again."""
    out: list[Any] = []
    start = 0
    for request, count in zip(requests, spans, strict=True):
        if count:
            out.append(group_results(request, results[start : start + count]))
            start += count
        else:
            out.append(results[start])
            start += 1
    return out


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
