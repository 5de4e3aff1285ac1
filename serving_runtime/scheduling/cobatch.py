"""Co-batching: a batch job's rows ride along in real-time batches instead of waiting for gaps.

Slices (``slicing.py``) keep a real-time request from waiting behind a whole batch-job request, but a
slice only runs when no real-time request is queued. Closed-loop real-time clients at a steady load keep
the queue busy, so the job starves, and its slices (few rows per call) cost more per row than full batches.
On a CPU, and more so on a GPU, a model call costs about the same for 1 row as for a few (the wide MLP on
one ORT thread: 2.4 ms for 1 row, 2.9 ms for 16), so the real-time batches that run anyway have room.

With ``background_fill_rows`` (``background.py``) a batch led by higher-level requests is topped up to that
many rows (never past ``max_batch_size``) with the next rows of the oldest background request: the one
being run in parts, else the first queued background request, which then leaves the queue and is
executing (as a sliced one). One background request completes across several batches; its parts are
joined in row order (``SlicedRequest``) and its caller gets one answer. A failed batch fails the riding
request once; a cancelled one stops riding; unloading fails it ``UNAVAILABLE``. The rows a real-time
request may wait for are bounded as with slices: a topped-up batch holds ``fill_rows`` rows at most, the
size of one slice. With ``background_slice_us`` the fill is capped at the slice size the sizer settled on,
so the same time budget bounds both.

Statistics, as Triton counts a batch: ``execution_count`` +1 and ``inference_count`` + every row for the
batch (riders included); the background request is one success when its last part is answered, its compute
time the sum of the batches it rode in.

Public: ``CoBatch``, ``top_up``. Runs on the event loop thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shipyard.serving_runtime.errors import ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.instances import Batch
from shipyard.serving_runtime.scheduling.queue import RequestQueue
from shipyard.serving_runtime.scheduling.slicing import SlicedRequest, Slicer


@dataclass(eq=False)
class Rider:
    """Rows ``[start, start + rows)`` of a background request, riding in a real-time batch."""

    state: SlicedRequest
    start: int
    request: InferenceRequest


@dataclass(eq=False)
class CoBatch(Batch):
    """A real-time batch topped up with background rows: ``requests`` holds the envelopes' requests, then
    the riders' (in that order, as the backend sees the rows)."""

    riders: list[Rider] = field(default_factory=list)

    def finish(self, slicer: Slicer, compute_ns: int) -> list[SlicedRequest]:
        """Hand the riders' outputs (or the batch's error) to ``slicer``; strip them from ``results`` so the
        rest is the envelopes' as for a plain batch. Returns the background requests now to be answered."""
        answered: list[SlicedRequest] = []
        count = len(self.envelopes)
        own = self.results[count:] if self.error is None else []
        for index, rider in enumerate(self.riders):
            outcome: dict[str, np.ndarray] | ServingError
            outcome = self.error if self.error is not None else own[index]
            done = slicer.part_done(rider.state, rider.start, outcome, compute_ns)
            if done is not None:
                answered.append(done)
        if self.error is None:
            del self.results[count:]
        return answered


def fill_target(slicer: Slicer, max_batch_size: int) -> int:
    """Rows a real-time batch is topped up to (0: co-batching off)."""
    rules = slicer.settings
    fill = min(rules.fill_rows, max_batch_size)
    if fill and rules.slice_ns:
        fill = min(fill, max(slicer.sizer.rows, 1))
    return fill


def top_up(batch: Batch, slicer: Slicer, queue: RequestQueue, max_batch_size: int, now_ns: int) -> Batch:
    """``batch`` (just formed from ``batch.envelopes``), or a ``CoBatch`` of it plus background rows when it
    is led by a higher-level request and has room below the fill target."""
    level = slicer.settings.level
    if not batch.merge or not batch.envelopes or batch.envelopes[0].level >= level:
        return batch
    room = fill_target(slicer, max_batch_size) - batch.size
    if room <= 0:
        return batch
    key = batch.envelopes[0].shape_key
    riders: list[Rider] = []
    while room > 0:
        state = _source(slicer, queue, key, level, now_ns)
        if state is None:
            break
        start, part = state.take(room)
        riders.append(Rider(state, start, part))
        room -= part.batch_size
    if not riders:
        return batch
    requests = [envelope.request for envelope in batch.envelopes] + [rider.request for rider in riders]
    size = batch.size + sum(rider.request.batch_size for rider in riders)
    return CoBatch(batch.envelopes, size, True, requests=requests, riders=riders)


def _source(slicer: Slicer, queue: RequestQueue, key: object, level: int, now_ns: int) -> SlicedRequest | None:
    """The background request to take rows from: the one being run in parts, else the first queued one
    (adopted by ``slicer``); None when neither fits a batch of shape ``key``."""
    head = slicer.head()
    if head is not None:
        return head if head.envelope.shape_key == key else None
    first = next(iter(queue), None)
    if (
        first is None
        or first.level < level  # a real-time request the decision left out (another shape, or no room)
        or first.shape_key != key
        or first.request.on_response is not None  # decoupled: its responses cannot be cut
        or first.request.group_arrivals_ns is not None
        or first.delayed
    ):
        return None
    return slicer.adopt(queue, now_ns)
