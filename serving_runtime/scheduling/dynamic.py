"""The dynamic batcher: queue on the event loop, decide, run batches on instance threads.

Everything about the queue happens on the event loop thread, so it needs no lock: ``submit``
queues an envelope and runs the decision; a finished batch (posted back from its worker thread)
frees its instance and runs the decision again; a timer runs it when a queue delay or a request
timeout comes due. Nothing polls. An idle instance takes what is queued at once (unless
``max_queue_delay_microseconds`` asks to wait for more); while every instance is busy, arrivals
gather into the next batch.

With ``merge=False`` the same machinery runs requests one by one (the scheduler for models
without ``dynamic_batching``).

Tiny models run inline: ``submit`` runs a request on the event loop thread at once, and ``_kick`` a
batch formed from the queue, when an instance is idle and ``inline.py``'s rule says the batch fits
(docs/serving.md, "Tiny models run inline").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from functools import partial
from typing import ClassVar

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.errors import (
    InvalidArgument,
    ModelNotReady,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    ServingError,
)
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.batch import shape_key
from shipyard.serving_runtime.scheduling.batching import BatchingSettings
from shipyard.serving_runtime.scheduling.cobatch import CoBatch, top_up
from shipyard.serving_runtime.scheduling.decision import decide
from shipyard.serving_runtime.scheduling.group import drop_member
from shipyard.serving_runtime.scheduling.idle_lane import lane_for
from shipyard.serving_runtime.scheduling.inline import LONE_INLINE_MAX_COMPUTE_NS, InlineRule
from shipyard.serving_runtime.scheduling.instances import HANDOFF_TIMEOUT_S, Batch, InstanceWorker, make_workers
from shipyard.serving_runtime.scheduling.prefetch import PrefetchRule, prefetch_on
from shipyard.serving_runtime.scheduling.queue import (
    QUEUED,
    Envelope,
    QueueSettings,
    RequestQueue,
    set_exception,
    set_result,
)
from shipyard.serving_runtime.scheduling.slicing import SliceBatch, SlicedRequest, Slicer
from shipyard.serving_runtime.stats import ModelStats

log = logging.getLogger(__name__)

_UNLIMITED = 1 << 62
# Hand the GIL to an instance thread at dispatch (see ``instances``) only while batches compute
# for at least this long: for a trivial model the loop's time matters more than the worker's start.
HANDOFF_MIN_COMPUTE_NS = 1_000_000


def _record_failure(stats: ModelStats, request: InferenceRequest, reason: str, end_ns: int, enqueue_ns: int) -> None:
    """A failed request, or each request of a group (``InferenceRequest.group_arrivals_ns``)."""
    if request.group_arrivals_ns is None:
        stats.record_failure(reason, end_ns - enqueue_ns)
    else:
        stats.record_group_failure(reason, end_ns, request.group_arrivals_ns)


class DynamicBatcher:
    """A ``Scheduler`` for one model version (see ``scheduling.api.Scheduler``)."""

    # Requests accepted and not finished by every dynamic batcher of this process (its event
    # loop's thread only): 1 means the process serves one request alone (light load; a Python
    # model then sends it from the loop, backends/python/instance.py ``takes_loop_path``).
    process_pending: ClassVar[int] = 0

    def __init__(
        self,
        instances: Sequence[BackendInstance],
        model_name: str,
        version: int,
        batching: BatchingSettings | None = None,
        queueing: QueueSettings | None = None,
    ) -> None:
        """Raises: ModelConfigError for invalid settings; ValueError when ``instances`` is empty."""
        where = f"model {model_name!r} version {version}"
        if not instances:
            raise ValueError(f"{where} has no instances; instance_group count must be >= 1")
        self._batching = batching or BatchingSettings(merge=False)
        self._batching.validate(where)
        self._merge = self._batching.merge
        self._max_batch = self._batching.max_batch_size if self._merge else _UNLIMITED
        self._preferred = self._batching.preferred_batch_sizes if self._merge else ()
        self._delay_ns = self._batching.max_queue_delay_us * 1000 if self._merge else 0
        self._queue = RequestQueue(queueing or QueueSettings())
        realtime, self._lane = lane_for(instances, self._batching.background if self._merge else None,
                                        model_name, version, where, self._max_batch)  # fmt: skip
        self._workers = make_workers(realtime, model_name, version)
        self._idle: list[InstanceWorker] = list(reversed(self._workers))  # real-time instances (not the lane's)
        self._one_instance = len(self._workers) == 1
        self._workers += self._lane.workers if self._lane is not None else []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ns = 0
        self._pending = 0
        self._accepting = True
        self._closed = False
        self._drained: asyncio.Future[None] | None = None
        self._kick_soon = False
        self._handoff_s = 0.0  # HANDOFF_TIMEOUT_S while the last batch computed >= HANDOFF_MIN_COMPUTE_NS
        self._inline = InlineRule(self._delay_ns == 0 and all(getattr(i, "inline_safe", False) for i in instances))
        self._background = self._batching.background
        self._foreground_ns = 0  # when a batch holding higher-level requests than the background last finished
        background = self._background if self._merge else None  # only a batch dimension can be cut
        self._slicer = Slicer(background, self._release, self._max_batch) if background is not None else None
        self._prefetch = PrefetchRule(
            self._delay_ns == 0
            and self._lane is None
            and self._slicer is None
            and all(worker.can_prefetch for worker in self._workers)
            and prefetch_on()
        )
        if not self._prefetch.enabled:  # the workers then skip its bookkeeping around each batch
            for worker in self._workers:
                worker.can_prefetch = False
        self.stats = ModelStats(model_name, version)
        self._where = where

    # -- the caller's side ---------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            for worker in self._workers:
                worker.start(loop.call_soon_threadsafe, self._on_batch_done, self._queue.__len__)
        elif self._loop is not loop:
            raise RuntimeError(f"{self._where}: the scheduler is bound to another event loop")
        return loop

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Queue ``request`` and return its outputs.

        Raises: QueueFull, RequestTimeout, RequestCancelled, BackendError, ModelNotReady, and
        InvalidArgument when the request's batch exceeds ``max_batch_size``.
        """
        if not self._accepting:
            raise ModelNotReady(f"{self._where} is unloading; retry against the new version")
        loop = self._loop if self._loop is not None else self._bind()
        size = request.batch_size
        if size > self._max_batch:
            raise InvalidArgument(
                f"request batch size {size} exceeds max_batch_size {self._max_batch} of {self._where}"
            )
        now = time.monotonic_ns()
        if self._idle and not len(self._queue) and self._inline.fits(size) and self._inline.take_turn(loop):
            return self._run_inline(request, now)
        if request.lone and self._runs_lone_inline(size) and self._inline.take_turn(loop):
            return self._run_inline(request, now)
        key = shape_key(request.inputs) if self._merge else object()  # object(): never merges
        envelope = Envelope(request, loop.create_future(), now, size, key)
        if request.group_arrivals_ns is not None:
            envelope.weight = len(request.group_arrivals_ns)
        try:
            self._queue.push(envelope)
        except QueueFull as exc:
            if request.group_arrivals_ns is None:  # a group's requests are retried one by one
                self.stats.record_failure(exc.reason, 0)
            raise
        self._pending += 1
        DynamicBatcher.process_pending += 1
        self.stats.pending = self._pending
        if request.group_arrivals_ns is not None:
            request.leave = partial(self._leave, envelope)
        if (
            request.group_arrivals_ns is not None
            and self._idle
            and len(self._queue) == 1
            and getattr(request, "formed", True)
        ):
            self._kick()  # a group is the batch its requests formed already: an idle instance starts it now
        elif not self._kick_soon:
            # Decide once all the callbacks of this loop iteration have run: requests woken or
            # read together (e.g. callers resubmitting as a batch is answered) join one batch.
            self._kick_soon = True
            loop.call_soon(self._deferred_kick)
        try:
            return await envelope.future
        except asyncio.CancelledError:
            if self._queue.discard(envelope):
                self._release(1)
                _record_failure(self.stats, request, RequestCancelled.reason, time.monotonic_ns(), now)
            else:  # executing: its batch records it when it ends (as Triton's); tell the model
                hook = getattr(request, "cancel_hook", None)
                if hook is not None:
                    hook()
            raise RequestCancelled("request cancelled by the client before it finished") from None
        finally:
            request.leave = None  # a group's: no cycle request -> leave -> envelope -> request

    def _leave(self, envelope: Envelope, position: int, start: int, stop: int) -> bool:
        """The client of request ``position`` of a queued group (rows ``start:stop``) went away: as a
        cancelled request leaves the queue on the Python path, it leaves the group (counted CANCELED,
        timed from its own arrival); the group runs without it, or, left empty, leaves the queue.
        False when the group is no longer queued (executing: its batch counts it when it ends)."""
        if envelope.state != QUEUED:
            return False
        request = envelope.request
        arrival = drop_member(request, position, start, stop)
        self.stats.record_failure(RequestCancelled.reason, time.monotonic_ns() - arrival)
        if request.group_arrivals_ns:
            envelope.batch_size = request.batch_size
            self._queue.lighten(envelope)
        elif self._queue.discard(envelope):
            self._release(1)
            set_exception(envelope.future, RequestCancelled("request cancelled by the client before it finished"))
        return True

    def _runs_lone_inline(self, size: int) -> bool:
        """Whether a lone request (``InferenceRequest.lone``: an ensemble's step at c=1, or the native
        gRPC fast path's only call in progress) runs on the event loop: its model runs inline
        (``inline_safe``; ONNX Runtime releases the GIL while it computes) on its one real-time
        instance (a request arriving meanwhile would wait for that instance anyway), nothing else is
        pending in any dynamic batcher of the process, the instance is idle and its batches have been
        taking at most ``LONE_INLINE_MAX_COMPUTE_NS``. That saves the two thread hand-overs (loop ->
        worker -> loop) and the task's resume; the loop is held for the compute, as the hand-over
        already holds it for up to ``HANDOFF_TIMEOUT_S`` (docs/serving.md, "The ensemble at c=1",
        "The only call at c=1")."""
        if not (
            DynamicBatcher.process_pending == 0 and self._one_instance and self._idle and not len(self._queue)
        ):
            return False
        return self._inline.fits(size, LONE_INLINE_MAX_COMPUTE_NS)

    def _run_inline(self, request: InferenceRequest, enqueue_ns: int) -> dict[str, np.ndarray]:
        """Run ``request`` on an idle instance on this (the event loop's) thread."""
        size = request.batch_size
        worker = self._idle.pop()
        self._pending += 1
        DynamicBatcher.process_pending += 1
        self.stats.pending = self._pending
        batch = Batch([], size, self._merge, requests=[request])
        try:
            worker.run_inline(batch)
        finally:
            self._idle.append(worker)
        compute_ns = batch.compute_end_ns - batch.compute_start_ns
        self._inline.observe(compute_ns, size, inline=True)
        end = time.monotonic_ns()
        background = self._background
        if background is not None and self._queue.settings.level_index(request.priority) < background.level:
            self._foreground_ns = end  # real-time work ran (as in _on_batch_done): recent for slicing
        self._release(1)
        stats = self.stats
        if batch.error is not None:
            _record_failure(stats, request, batch.error.reason, end, enqueue_ns)
            raise batch.error
        stats.record_execution(size, compute_ns)
        if request.group_arrivals_ns is not None:
            stats.record_group_success(size, end, batch.compute_start_ns, compute_ns, request.group_arrivals_ns)
        else:
            stats.record_success(size, end - enqueue_ns, batch.compute_start_ns - enqueue_ns, compute_ns)
        result = batch.results[0]
        if isinstance(result, ServingError):
            raise result
        return result

    def pending_count(self) -> int:
        """Requests accepted and not yet finished (queued or executing)."""
        return self._pending

    async def drain(self) -> None:
        """Stop accepting; return when every accepted request has finished."""
        self._accepting = False
        if self._pending == 0:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)

    def close(self) -> None:
        """Fail what is still queued (ModelNotReady), stop the worker threads, close the instances.

        May be called from the event loop thread or another thread (e.g. ``asyncio.to_thread``);
        blocks until the instance threads have finished their current batch.
        """
        if self._closed:
            return
        self._accepting = False
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._on_loop_thread():
            loop.call_soon_threadsafe(self._drop_queued)
        else:
            self._drop_queued()
        for worker in self._workers:
            worker.stop(timeout_s=60)
            if worker.started:
                log.warning("instance thread %s did not stop within 60 s", worker.name)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _drop_queued(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        dropped = self._queue.drop_all() + (self._slicer.abandon() if self._slicer is not None else [])
        if dropped:
            self._fail(dropped, ModelNotReady(f"{self._where} was unloaded before the request ran; retry"))

    # -- the event loop's side -----------------------------------------------------------------

    def _fail(self, envelopes: list[Envelope], error: ServingError) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._fail, envelopes, error)
                return
            self._release(len(envelopes))  # nobody can be awaiting a closed loop's futures
            return
        now = time.monotonic_ns()
        for envelope in envelopes:
            if not envelope.future.done():
                set_exception(envelope.future, error)
                _record_failure(self.stats, envelope.request, error.reason, now, envelope.enqueue_ns)
        self._release(len(envelopes))

    def _release(self, count: int) -> None:
        self._pending -= count
        DynamicBatcher.process_pending -= count
        self.stats.pending = self._pending
        if self._pending == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _kick(self) -> None:
        """Run the decision until it says wait; dispatch batches to idle instances."""
        queue = self._queue
        now = time.monotonic_ns()
        rejected = queue.expire(now)
        slicer = self._slicer
        lane = self._lane
        if lane is not None and slicer is not None:
            lane.dispatch(queue, slicer, now, self._foreground_ns)  # background work to the idle lane first
        while len(queue) or (slicer is not None and slicer.has_work()):
            items: Iterable[Envelope] = queue
            if lane is not None and lane.keeps_foreground_free(queue):
                if self._borrow(now):  # the real-time instances borrow background work while real time is quiet
                    continue
                break  # background-only work waits for the idle lane
            free = bool(self._idle) or (lane is not None and lane.can_lend())  # the lane takes real-time work idle
            if slicer is not None and free:
                plan = slicer.plan(queue, self._foreground_ns, now)
                if plan.hold_until_ns is not None:
                    self._arm_timer(plan.hold_until_ns)
                    break
                if plan.slice is not None:
                    self._free_worker().hand_off(plan.slice, self._handoff_s)
                    continue
                items = plan.items
            decision = decide(
                items,
                now,
                max_batch_size=self._max_batch,
                preferred_batch_sizes=self._preferred,
                max_queue_delay_ns=self._delay_ns,
                instance_idle=free,
                next_deadline_ns=queue.next_deadline(),
            )
            if decision.send:
                batch = self._pop_batch(decision.send, decision.batch_size, now)
                first = batch.envelopes[0]
                if slicer is not None:  # background rows ride along in a real-time batch (cobatch.py)
                    batch = top_up(batch, slicer, queue, self._max_batch, now)
                if lane is not None and first.level < lane.settings.level:
                    lane.last_realtime_ns = now  # real-time work is recent: the real-time instances lend nothing
                if not self._ran_queued_inline(batch):
                    worker = self._free_worker()
                    worker.started_ns, worker.current_size = now, batch.size
                    worker.hand_off(batch, self._handoff_s)
                continue
            if decision.wait_ns is not None:
                self._arm_timer(now + decision.wait_ns)
            break
        if self._prefetch.enabled and len(queue) and not self._idle:
            self._send_ahead(now)
        if lane is not None and slicer is not None:
            lane.dispatch(queue, slicer, now, self._foreground_ns)  # the rest of one co-batching took rows of
        if rejected:  # answered after the queue work, outside the decision loop
            self._reject(rejected)

    def _ran_queued_inline(self, batch: Batch) -> bool:
        """Run a batch formed from the queue on this (the loop's) thread when the model runs inline
        and its expected compute for this size fits (``InlineRule.fits``). Without this a
        tiny model, once one batch went to its thread, stayed there: requests arriving meanwhile
        queue, and each batch's end dispatched the next to the thread (at add_sub gRPC c=64 the
        instance thread ran a third of the batches, each paying the hand-over both ways)."""
        if not (self._lane is None and self._slicer is None and self._idle and self._inline.fits(batch.size)):
            return False
        worker = self._idle.pop()
        worker.run_inline(batch)
        self._on_batch_done(batch, inline=True)
        return True

    def _send_ahead(self, now: int) -> None:
        """Requests wait and every instance is busy: form each busy instance's next batch shortly before
        its current one is expected to end and send it ahead (``prefetch``); wake up then if not yet."""
        queue = self._queue
        for worker in self._workers:
            if not len(queue):
                return
            if not worker.prefetch_open():
                continue
            window = self._prefetch.window_ns(worker.started_ns, worker.current_size)
            if window is None or now > window[1]:  # unknown cost, or running long: keep the requests queued
                continue
            if now < window[0]:
                self._arm_timer(window[0])
                continue

            def make(at_least: int = worker.current_size) -> Batch | None:
                decision = decide(
                    queue,
                    now,
                    max_batch_size=self._max_batch,
                    preferred_batch_sizes=self._preferred,
                    max_queue_delay_ns=0,
                    instance_idle=True,
                    next_deadline_ns=queue.next_deadline(),
                )
                # never smaller than the batch it follows: a closed loop's callers come back as the batch
                # before was answered, so a part of them sent ahead would split them into smaller batches;
                # and not request groups (an ensemble's steps, the native fast path), which cannot be sent
                if not decision.send or decision.batch_size < at_least:
                    return None
                if any(e.request.group_arrivals_ns is not None for e in itertools.islice(queue, decision.send)):
                    return None
                return self._pop_batch(decision.send, decision.batch_size, now)

            worker.prefetch(make)

    def _pop_batch(self, count: int, size: int, now: int) -> Batch:
        """The first ``count`` queued requests (``size`` items), dispatched ``now``, as a batch."""
        envelopes = self._queue.pop(count)
        for envelope in envelopes:
            envelope.dispatch_ns = now
        return Batch(envelopes, size, self._merge)

    def _reject(self, rejected: list[Envelope]) -> None:
        self._fail(rejected, RequestTimeout(f"request timed out in the queue of {self._where} before it ran"))

    def _free_worker(self) -> InstanceWorker:
        """An idle real-time instance, else an idle lane instance with no background work to run (``can_lend``)."""
        if self._idle:
            return self._idle.pop()
        assert self._lane is not None
        return self._lane.lend()

    def _borrow(self, now: int) -> bool:
        """Hand an idle real-time instance a piece of background work (``IdleLane.borrow``) when no real-time
        batch was dispatched or finished for ``background_recent_us``; else wake up when that is so. Whether a
        piece was dispatched."""
        lane, slicer = self._lane, self._slicer
        if not self._idle or lane is None or slicer is None:
            return False
        quiet_ns = lane.quiet_from(self._foreground_ns)
        if now < quiet_ns:
            self._arm_timer(quiet_ns)
            return False
        piece = lane.borrow(self._queue, slicer, now)
        if piece is None:
            return False
        self._idle.pop().hand_off(piece, self._handoff_s)
        return True

    def _deferred_kick(self) -> None:
        self._kick_soon = False
        if not self._closed:
            self._kick()

    def _arm_timer(self, when_ns: int) -> None:
        if self._timer is not None:
            if self._timer_ns <= when_ns:
                return
            self._timer.cancel()
        assert self._loop is not None
        self._timer_ns = when_ns
        self._timer = self._loop.call_later(max(when_ns - time.monotonic_ns(), 0) / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self._kick()

    def _on_batch_done(self, batch: Batch, inline: bool = False) -> None:
        """A batch ended: on its worker's post, or ``inline`` from ``_kick`` (which goes on with the
        queue itself, so this does not kick)."""
        assert batch.worker is not None
        compute_ns = batch.compute_end_ns - batch.compute_start_ns
        if batch.followed is not None:  # its worker goes straight on with the batch sent ahead
            batch.worker.started_ns, batch.worker.current_size = batch.compute_end_ns, batch.followed.size
        elif self._lane is not None and self._lane.owns(batch.worker):
            self._lane.release(batch.worker)
        else:
            self._idle.append(batch.worker)
        if batch.error is None:
            self._prefetch.observe(batch.size, compute_ns)
        self._handoff_s = HANDOFF_TIMEOUT_S if compute_ns >= HANDOFF_MIN_COMPUTE_NS else 0.0
        if self._background is not None and any(e.level < self._background.level for e in batch.envelopes):
            self._foreground_ns = time.monotonic_ns()
        if self._inline.enabled:
            self._inline.observe(compute_ns, batch.size, inline=inline)
        sliced = self._slicer.done(batch, compute_ns) if isinstance(batch, SliceBatch) and self._slicer else None
        riders = batch.finish(self._slicer, compute_ns) if isinstance(batch, CoBatch) and self._slicer else []
        if not self._closed and not inline:
            self._kick()  # the instance starts its next batch while we answer this one
        end = time.monotonic_ns()
        stats = self.stats
        if isinstance(batch, SliceBatch):
            if batch.error is None:
                stats.record_execution(batch.size, compute_ns)
            if sliced is not None:
                self._answer_sliced(sliced, end)
            return
        if batch.error is None:
            stats.record_execution(batch.size, compute_ns)
            # A request cancelled while it ran (its future is done) is still counted, as Triton does.
            for envelope, outputs in zip(batch.envelopes, batch.results, strict=True):
                future = envelope.future
                error = outputs if isinstance(outputs, ServingError) else None  # this request's own
                if not future.done():
                    if error is not None:
                        set_exception(future, error)
                    else:
                        set_result(future, outputs)
                group = envelope.request.group_arrivals_ns
                if error is not None and not getattr(error, "counts_as_success", False):
                    _record_failure(stats, envelope.request, error.reason, end, envelope.enqueue_ns)
                elif group is not None:
                    stats.record_group_success(envelope.batch_size, end, envelope.dispatch_ns, compute_ns, group)
                else:
                    stats.record_success(
                        envelope.batch_size,
                        end - envelope.enqueue_ns,
                        envelope.dispatch_ns - envelope.enqueue_ns,
                        compute_ns,
                    )
        else:
            failure = batch.error
            for envelope in batch.envelopes:
                if not envelope.future.done():
                    set_exception(envelope.future, failure)
                _record_failure(stats, envelope.request, failure.reason, end, envelope.enqueue_ns)
        self._release(len(batch.envelopes))
        for state in riders:
            self._answer_sliced(state, end)

    def _answer_sliced(self, sliced: SlicedRequest, end: int) -> None:
        """Answer a background request run in slices (``slicing``): its joined outputs or its first error."""
        envelope = sliced.envelope
        if sliced.error is not None:
            set_exception(envelope.future, sliced.error)
            self.stats.record_failure(sliced.error.reason, end - envelope.enqueue_ns)
        else:
            set_result(envelope.future, sliced.joined())
            queued = envelope.dispatch_ns - envelope.enqueue_ns
            self.stats.record_success(envelope.batch_size, end - envelope.enqueue_ns, queued, sliced.compute_ns)
        self._release(1)
