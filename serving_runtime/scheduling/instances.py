"""Instance workers: one thread per model instance, executing formed batches off the event loop.

A worker takes one batch at a time from its own inbox, merges the inputs, runs the backend,
splits the outputs per request and hands the result back to the event loop with one
``call_soon_threadsafe`` per batch. The instance is closed by its thread after the last batch.

``run_inline`` runs a batch on the calling thread instead (the dynamic batcher does that on the
event loop for models whose batches take microseconds, see ``dynamic``); a lock per worker keeps
the instance to one batch at a time and keeps closing from overlapping a batch.

A backend whose ``start_requests`` accepts a batch (Python models: a lone request at light load,
or every batch with ``SHIPYARD_PYTHON_LOOP_CALL=1``; their compute runs in another process) takes it on the event loop
itself and answers there (``backends/python/loop_call.py``); its worker thread then only runs
batches while that process restarts, and closes the instance.

``submit`` can hand the GIL over: it waits (at most ``handoff_s``, with the GIL released) until
the worker has merged the inputs and entered the backend, which runs without the GIL. The
dynamic batcher asks for that while its batches take 1 ms or more to compute.
Without that, a busy event loop keeps the GIL and the woken worker waits for it for up to the
interpreter's switch interval (5 ms): measured on the wide MLP under load, 2.5 ms on average
between dispatch and the start of compute, against 0.3 ms with the hand-over (docs/serving.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.errors import BackendError, ModelNotReady, ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.batch import batch_outputs, merge_inputs, split_outputs
from shipyard.serving_runtime.scheduling.queue import Envelope

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Batch:
    """Requests dispatched together to one instance; filled in by the worker."""

    envelopes: list[Envelope]
    size: int  # items (sum of the requests' batch sizes)
    merge: bool  # False: the model does not batch, run the single request's tensors as they are
    requests: list[InferenceRequest] = field(default_factory=list)  # without envelopes (inline): the requests
    handoff: bool = False  # ``submit`` waits for the worker to enter the backend (see the module docstring)
    worker: InstanceWorker | None = None
    # Per request: its outputs, or its own error (backends with ``execute_requests``).
    results: list[dict[str, np.ndarray] | ServingError] = field(default_factory=list)
    error: ServingError | None = None
    compute_start_ns: int = 0
    compute_end_ns: int = 0
    # Sent ahead (``InstanceWorker.prefetch``): what the instance's ``presend`` returned (None: not
    # sent, the worker runs the batch as usual); ``followed``: the batch sent ahead of this one's end,
    # which the worker runs next (the instance stays busy).
    pending: Any = None
    followed: Batch | None = None

    def request_list(self) -> list[InferenceRequest]:
        """The batch's requests: ``requests`` (inline batches), else its envelopes'."""
        return self.requests or [envelope.request for envelope in self.envelopes]


_STOP = object()
HANDOFF_TIMEOUT_S = 0.001


class InstanceWorker:
    """A thread that owns one ``BackendInstance``.

    ``on_done(batch)`` runs on the event loop (through ``post``, e.g. ``loop.call_soon_threadsafe``)
    after every batch, with ``batch.results`` or ``batch.error`` set.
    """

    def __init__(self, instance: BackendInstance, name: str) -> None:
        self.instance = instance
        self.name = name
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._post: Callable[[Callable[[Batch], None], Batch], object] | None = None
        self._on_done: Callable[[Batch], None] | None = None
        self._backlog: Callable[[], int] | None = None
        self._entered = threading.Event()  # set when the current batch has entered the backend
        self._use = threading.Lock()  # one batch at a time on the instance, and never during close
        self._closed = False
        # Sending the next batch ahead (``prefetch``): under ``_next_lock``, whether this thread runs a
        # batch and will look for a next one after it, and that next one.
        self._next_lock = threading.Lock()
        self._running = False
        self._next: Batch | None = None
        # the instance can take a batch ahead (its batcher turns this off when it sends nothing ahead)
        self.can_prefetch = callable(getattr(instance, "presend", None)) and bool(
            getattr(instance, "prefetchable", False)
        )
        # The batch this worker computes, as the dynamic batcher last knew it (loop thread only).
        self.started_ns = 0
        self.current_size = 0

    def start(
        self,
        post: Callable[[Callable[[Batch], None], Batch], object],
        on_done: Callable[[Batch], None],
        backlog: Callable[[], int] | None = None,
    ) -> None:
        """Start the thread; results are delivered with ``post(on_done, batch)``. ``backlog()``:
        requests waiting for an instance (read from this thread; while any wait, the loop answers
        a finished batch and this thread goes on to the next one: see ``answer_early``)."""
        self._post = post
        self._on_done = on_done
        self._backlog = backlog
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def hand_off(self, batch: Batch, handoff_s: float = 0.0) -> None:
        """Hand ``batch`` to this worker (it must be idle); block, with the GIL released, until the
        worker has entered the backend or ``handoff_s`` has passed (0: do not wait)."""
        batch.worker = self
        start = getattr(self.instance, "start_requests", None)
        if start is not None and self._on_done is not None and self._start_on_loop(start, batch):
            return
        if handoff_s > 0 and self._thread.is_alive():
            batch.handoff = True
            self._entered.clear()
            self._inbox.put(batch)
            self._entered.wait(handoff_s)
        else:
            self._inbox.put(batch)

    def prefetch_open(self) -> bool:
        """Whether ``prefetch`` may take a batch now (a racy read: ``prefetch`` decides under its lock)."""
        return self.can_prefetch and self._running and self._next is None

    def prefetch(self, make: Callable[[], Batch | None]) -> Batch | None:
        """While this worker runs a batch and has none after it, ``make()`` the next batch and send it to
        the instance ahead (``presend``: Python models write it to their process's socket, which reads
        it once it has answered the current one); this thread runs it right after the current one,
        which is then ``followed`` by it. None (``make`` not called, or it made nothing) when the
        current batch has just ended: the batcher dispatches as usual."""
        with self._next_lock:
            if not self.prefetch_open():
                return None
            batch = make()
            if batch is None:
                return None
            batch.worker = self
            try:
                batch.pending = self.instance.presend(batch.request_list())  # type: ignore[attr-defined]
            except Exception:  # not sent: the worker runs it the usual way after the current one
                log.exception("sending a batch ahead to instance %s failed", self.name)
                batch.pending = None
            self._next = batch
            return batch

    def _start_on_loop(self, start: Callable[..., bool], batch: Batch) -> bool:
        """A backend that computes in another process (Python models: ``start_requests``) gets the
        batch on this thread, the event loop's, and answers on it: no worker thread in between.
        False: it cannot now (e.g. its process restarts), the worker thread runs the batch."""
        on_done = self._on_done
        assert on_done is not None

        def done(results: list[dict[str, np.ndarray] | ServingError]) -> None:
            batch.results = results
            batch.compute_end_ns = time.monotonic_ns()
            on_done(batch)

        batch.compute_start_ns = time.monotonic_ns()
        waiting = self._backlog() if self._backlog is not None else 0
        return bool(start(batch.request_list(), done, waiting))

    def run_inline(self, batch: Batch) -> None:
        """Run ``batch`` on the calling thread (the worker must be idle); results or the error are
        stored on ``batch``. Never raises; a closed instance fails the batch with ModelNotReady."""
        batch.worker = self
        with self._use:
            if self._closed:
                batch.error = ModelNotReady(f"instance {self.name} is closed; retry against the new version")
                return
            self.run_batch(batch)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the current batch, close the instance, end the thread."""
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(timeout_s)
        elif not self._thread.ident:  # never started: close here
            self._close_instance()

    def _close_instance(self) -> None:
        with self._use:
            self._closed = True
            try:
                self.instance.close()
            except Exception:  # closing must not stop the others
                log.exception("closing instance %s failed", self.name)

    def _run(self) -> None:
        name_os_thread(self.name)
        try:
            while True:
                taken = self._inbox.get()
                if taken is _STOP:
                    return
                assert isinstance(taken, Batch)
                item: Batch | None = taken
                if self.can_prefetch:
                    with self._next_lock:
                        self._running = True
                while item is not None:
                    with self._use:
                        self.run_batch(item)
                    if self.can_prefetch:
                        with self._next_lock:  # the batch sent ahead of this one's end, if any, runs next
                            item.followed, self._next = self._next, None
                            self._running = item.followed is not None
                    self._finished(item)
                    item = item.followed
        finally:
            self._close_instance()

    def _finished(self, item: Batch) -> None:
        """Hand a finished batch to the event loop (and answer its early requests)."""
        senders = answer_early(item) if self._backlog is None or not self._backlog() else []
        try:
            assert self._post is not None and self._on_done is not None
            self._post(self._on_done, item)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            log.debug("event loop closed; dropping results of a batch on %s", self.name)
        for send in senders:
            send()

    def run_batch(self, batch: Batch) -> None:
        """Merge, execute, split; store results or the error on ``batch``. Never raises."""
        requests = batch.request_list()
        if batch.pending is not None:  # sent ahead (``prefetch``): its process is on it, or about to be
            batch.compute_start_ns = time.monotonic_ns()
            try:
                batch.results = self.instance.finish_presend(requests, batch.pending)  # type: ignore[attr-defined]
            finally:
                batch.pending = None
                batch.compute_end_ns = time.monotonic_ns()
            return
        by_request = getattr(self.instance, "execute_requests", None)
        try:
            if by_request is not None:  # the backend takes the requests as a list (Python models)
                batch.compute_start_ns = time.monotonic_ns()
                if batch.handoff:  # it waits on another process without the GIL: release the loop now
                    self._entered.set()
                try:
                    batch.results = by_request(requests)
                finally:
                    batch.compute_end_ns = time.monotonic_ns()
                return
            if batch.merge:
                inputs = merge_inputs(requests)
                outputs = batch_outputs(requests)
            else:
                inputs = requests[0].inputs
                outputs = requests[0].outputs
            batch.compute_start_ns = time.monotonic_ns()
            if batch.handoff:
                self._entered.set()
            try:
                produced = self.instance.execute(inputs, outputs)
            finally:
                batch.compute_end_ns = time.monotonic_ns()
            if batch.merge:
                batch.results = list(split_outputs(produced, requests, batch.size))
            else:
                batch.results = [produced]
        except ServingError as exc:
            batch.error = exc
        except Exception as exc:  # the backend's own error: fails this batch only
            batch.error = BackendError(f"backend failed on a batch of {batch.size}: {type(exc).__name__}: {exc}")
            if not batch.compute_end_ns:
                batch.compute_start_ns = batch.compute_end_ns = time.monotonic_ns()
        finally:
            if batch.handoff:
                self._entered.set()


def answer_early(batch: Batch) -> list[Callable[[], None]]:
    """What answers the requests of a finished ``batch`` that asked to be answered from this thread
    (``InferenceRequest.answer_early``: the native gRPC fast path), to call right after the batch's
    completion was posted to the event loop: that post queues the statistics and futures ahead of
    anything the client can send once it has its answer, and the answer skips the loop's wake-up
    and turn (docs/serving.md, "Latency at concurrency 1"). Only while no request waits for an
    instance: under load this thread starts the next batch and the loop answers, as before.
    Never raises."""
    if batch.error is not None:
        return []
    senders = []
    requests = batch.request_list()
    for request, result in zip(requests, batch.results, strict=False):
        early = request.answer_early
        if early is None or isinstance(result, ServingError):
            continue
        try:
            send = early(result)
        except Exception:  # the loop's path answers it (and reports the error)
            log.exception("answering a request from instance thread failed; the event loop answers it")
            continue
        if send is not None:
            senders.append(send)
    return senders


def make_workers(instances: Sequence[BackendInstance], model_name: str, version: int) -> list[InstanceWorker]:
    """One worker per instance, named after the model for thread dumps."""
    return [InstanceWorker(instance, f"{model_name}-v{version}-i{i}") for i, instance in enumerate(instances)]


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS too (Linux: its first 15 bytes, ``/proc/.../comm``), so
    ``top -H``, py-spy and ``benchmarks/score_profile.py`` tell instance threads apart. Never raises."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
