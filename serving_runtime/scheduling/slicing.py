"""Background requests in slices: a batch job's big request never holds an instance for long while
real-time work is around.

Priority orders the queue but cannot preempt a batch that executes: a real-time request that arrives
while a 128-row batch-job request runs waits for all of it. With ``background_slice_rows``
(``background.py``), while higher-level work is recent, a background request bigger than the slice is
taken out of the queue and run ``slice_rows`` rows at a time; between two slices the batcher decides
again, so real-time requests that arrived meanwhile go first. The slices' outputs are joined in row order
and the caller gets one answer, as if the request had run whole. When real-time work stops (nothing for
``background_recent_us``), the rest of a request runs whole and new requests are no longer cut.

Cutting a request along its batch dimension is the inverse of what dynamic batching does (merging
requests along it), so it is valid for any model that batches; decoupled requests are never cut.
A request being sliced has left the queue: queue timeouts no longer apply and ``max_queue_size`` no
longer counts it (it is executing).

With ``background_slice_us`` the slice is sized by time (``SliceSizer``): it starts at
``background_slice_rows`` (else 1) and doubles after each full slice that computed within the budget; a
slice over it halves the size and keeps the bigger size off for ``RETRY_NS``. On a CPU the size settles
where a call's cost starts to grow with rows; on a GPU, where a big batch costs about what a small one
does, it grows to ``max_batch_size``.

Public: ``Slicer``, ``SliceSizer``, ``SliceBatch``, ``Plan``. Everything here runs on the event loop thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.serving_runtime.errors import ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.background import BackgroundSettings
from shipyard.serving_runtime.scheduling.instances import Batch
from shipyard.serving_runtime.scheduling.queue import Envelope, RequestQueue

RETRY_NS = 10_000_000_000  # a slice size seen over the budget is not tried again for 10 s


@dataclass
class SliceSizer:
    """Rows per background slice: fixed (``budget_ns`` 0) or the most that compute within ``budget_ns``."""

    budget_ns: int
    max_rows: int
    rows: int
    too_slow: dict[int, int] = field(default_factory=dict)  # rows -> when a slice of that many was over budget

    def observe(self, rows: int, compute_ns: int, now_ns: int) -> None:
        """A slice of ``rows`` rows computed in ``compute_ns`` (only full-size slices count)."""
        if not self.budget_ns or rows != self.rows:
            return
        if compute_ns > self.budget_ns:
            self.too_slow[rows] = now_ns
            self.rows = max(1, rows // 2)
            return
        bigger = min(rows * 2, self.max_rows)
        seen = self.too_slow.get(bigger)
        if bigger > rows and (seen is None or now_ns - seen >= RETRY_NS):
            self.rows = bigger


@dataclass(eq=False)
class SlicedRequest:
    """One background request being run slice by slice."""

    envelope: Envelope
    next_row: int = 0  # rows [0, next_row) are dispatched
    in_flight: int = 0
    parts: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # first row -> that slice's outputs
    compute_ns: int = 0
    answered: bool = False  # the caller has its answer (or went away); nothing more is dispatched
    error: ServingError | None = None  # the first slice's failure: the request's answer

    @property
    def remaining(self) -> int:
        return self.envelope.batch_size - self.next_row

    def take(self, rows: int) -> tuple[int, InferenceRequest]:
        """The next ``rows`` rows (fewer at the end) as a request of views of the inputs, and its first row;
        counted in flight until ``Slicer.part_done``."""
        request = self.envelope.request
        start = self.next_row
        stop = min(start + rows, self.envelope.batch_size)
        part = InferenceRequest(
            inputs={name: array[start:stop] for name, array in request.inputs.items()},
            outputs=request.outputs,
            batch_size=stop - start,
            priority=request.priority,
            request_id=request.request_id,
            parameters=request.parameters,
        )
        self.next_row = stop
        self.in_flight += 1
        return start, part

    def next_slice(self, rows: int) -> SliceBatch:
        """A batch of the next ``rows`` rows (fewer at the end): views of the request's inputs."""
        start, part = self.take(rows)
        return SliceBatch([], part.batch_size, True, requests=[part], sliced=self, start=start)

    def joined(self) -> dict[str, np.ndarray]:
        """The outputs of every slice, in row order."""
        pieces = [self.parts[start] for start in sorted(self.parts)]
        return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}


@dataclass(eq=False)
class SliceBatch(Batch):
    """A batch that runs one slice of a background request (``envelopes`` is empty)."""

    sliced: SlicedRequest | None = None
    start: int = 0
    lowered: bool = True  # on the idle lane: computed at its idle priority (False: no real-time work is recent)


@dataclass(frozen=True)
class Plan:
    """What the batcher does next with an idle instance: ``hold_until_ns`` (wait, then decide again),
    ``slice`` (dispatch it), or else decide on ``items`` as usual."""

    items: Iterable[Any] = ()
    hold_until_ns: int | None = None
    slice: SliceBatch | None = None


class Slicer:
    """The background requests being sliced, oldest first. ``release(n)``: the batcher's count of requests
    it accepted and has not finished, lowered when a caller went away."""

    def __init__(self, settings: BackgroundSettings, release: Callable[[int], None], max_rows: int) -> None:
        self.settings = settings
        self._release = release
        self.sizer = SliceSizer(settings.slice_ns, max_rows, min(settings.slice_rows or 1, max_rows))
        self._requests: deque[SlicedRequest] = deque()

    def head(self) -> SlicedRequest | None:
        """The oldest request with rows left to dispatch; forgets those done, answered or abandoned."""
        requests = self._requests
        while requests:
            head = requests[0]
            if not head.answered and head.envelope.future.done():  # the caller went away (cancelled)
                head.answered = True
                self._release(1)
            if head.answered or head.remaining == 0:
                requests.popleft()  # finished ones are answered from ``done``
                continue
            return head
        return None

    def has_work(self) -> bool:
        """Rows of a sliced request wait to be dispatched."""
        return self.head() is not None

    def plan(self, queue: RequestQueue, last_foreground_ns: int, now_ns: int) -> Plan:
        """The next step for an idle instance: ``queue`` in service order."""
        rules = self.settings
        first = next(iter(queue), None)
        if first is not None and first.level < rules.level:
            return Plan(items=rules.capped(queue))  # real-time work first, with its share of background rows
        hold = rules.hold_until(rules.level, last_foreground_ns, now_ns)
        if hold is not None:
            return Plan(hold_until_ns=hold)
        rows = self.sizer.rows if rules.slicing(last_foreground_ns, now_ns) else 0  # 0: not slicing now
        head = self.head()
        if head is not None:
            return Plan(slice=head.next_slice(rows or head.remaining))
        if (
            first is not None
            and rows
            and first.batch_size > rows
            and first.request.on_response is None
            and not first.delayed
        ):
            return Plan(slice=self.adopt(queue, now_ns).next_slice(rows))
        return Plan(items=rules.capped(queue, rows))

    def adopt(self, queue: RequestQueue, now_ns: int) -> SlicedRequest:
        """Take the first queued request out of ``queue`` to run it in parts (slices, or rows riding along in
        real-time batches: ``cobatch.py``); it is executing from now on."""
        (envelope,) = queue.pop(1)
        return self.adopt_envelope(queue, envelope, now_ns, taken=True)

    def adopt_envelope(
        self, queue: RequestQueue, envelope: Envelope, now_ns: int, taken: bool = False
    ) -> SlicedRequest:
        """``adopt`` for a given queued ``envelope`` (``taken``: already out of ``queue``)."""
        if not taken:
            queue.take(envelope)
        envelope.dispatch_ns = now_ns
        state = SlicedRequest(envelope)
        self._requests.append(state)
        return state

    def done(self, batch: SliceBatch, compute_ns: int) -> SlicedRequest | None:
        """Take a finished slice (before the batcher decides again: a failed request gets no more slices);
        the request once it is to be answered (its ``error``, else ``joined()``), else None."""
        state = batch.sliced
        assert state is not None
        if batch.error is None:
            self.sizer.observe(batch.size, compute_ns, batch.compute_end_ns)
        outcome: Any = batch.error if batch.error is not None else batch.results[0]
        return self.part_done(state, batch.start, outcome, compute_ns)

    def part_done(
        self, state: SlicedRequest, start: int, outcome: dict[str, np.ndarray] | ServingError, compute_ns: int
    ) -> SlicedRequest | None:
        """The rows from ``start`` of ``state`` have computed (their outputs) or failed; the request once it is
        to be answered, else None."""
        state.in_flight -= 1
        state.compute_ns += compute_ns
        if state.answered:
            return None
        if isinstance(outcome, ServingError):
            state.answered, state.error = True, outcome
            return state
        state.parts[start] = outcome
        if state.remaining == 0 and state.in_flight == 0:
            state.answered = True
            return state
        return None

    def abandon(self) -> list[Envelope]:
        """Stop every sliced request (the model is unloading); their envelopes, for the caller to fail."""
        left = [state.envelope for state in self._requests if not state.answered]
        for state in self._requests:
            state.answered = True
        self._requests.clear()
        return left
