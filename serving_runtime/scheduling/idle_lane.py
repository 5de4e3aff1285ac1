"""The idle lane: background work runs on instances of its own, at the OS's idle CPU priority.

Priority orders the queue, slices (``slicing.py``) bound how long a real-time request waits behind a
background batch and co-batching (``cobatch.py``) lets background rows ride in real-time batches, but
all of them share one instance: every row the job computes there is time a real-time request may wait,
so on a busy CPU the job's share and the real-time p99 trade against each other. With
``background_instances: N`` (``background.py``) the last N instances of the model's ``instance_group``
form the *idle lane*:

- they run background requests (the lowest priority level) first, each whole (``max_batch_size`` rows
  at most, as the job sent it); with no background work they take real-time batches at normal priority
  (``IdleLane.lend``: where the thread can switch per call), so without a job the model keeps all its
  instances for real-time traffic;
- while real-time work is recent, their worker threads compute at the OS's idle priority (else at normal
  priority: nothing to protect, and other processes cannot starve a job alone; ``SliceBatch.lowered``)
  (``background_thread_priority``: ``idle``, the default, is Linux ``SCHED_IDLE``; ``nice`` is nice 19;
  ``normal`` leaves it, for measuring), so the kernel gives their compute only the CPU time that nothing else
  wants: a real-time batch's compute, the event loop and the clients preempt it at once, instead of queueing
  behind it;
- the other instances are **reserved** for real-time work while it is recent (a real-time batch dispatched
  or finished within ``background_recent_us``): they take no background-only work then. Background rows
  still ride in their real-time batches with ``background_fill_rows`` (co-batching) and whole small
  background requests join them up to ``background_share_rows``. Requests the lane cannot take (decoupled,
  fast-path groups, delayed by a queue policy) go to the real-time instances as before;
- **work-conserving**: with no real-time work for ``background_recent_us``, an idle real-time instance
  *borrows* background work in pieces of ``background_slice_rows`` rows (else ``background_fill_rows``, else
  ``max_batch_size / 8``; with ``background_slice_us`` the slice sizer's), so a job alone uses every
  instance, and a real-time request that comes back waits for one piece at most (``IdleLane.borrow``).

**The GIL**: a thread that holds the GIL at idle priority and is preempted there stalls every normal thread
waiting for the GIL (the event loop). So the lane's thread is lowered only inside ``execute``, where ONNX
Runtime computes with the GIL released, and raised again right after (``ComputePriority``: two system calls,
~3.5 us per batch measured), where the OS allows raising again (Linux: ``CAP_SYS_NICE`` or ``RLIMIT_NICE`` >=
20, probed when the thread starts); where it does not, the thread stays lowered for good and a warning says
so. What is left at idle priority with the GIL held is ORT's own wrapping of the inputs and outputs inside
``run`` (microseconds). With ``intra_op_thread_count`` > 1 ORT's pool threads keep normal priority.

Public: ``IdleLane``, ``lane_for``, ``lower_this_thread``, ``ComputePriority``. Runs on the event loop thread,
except ``lower_this_thread`` and ``ComputePriority`` (on the lane's worker threads).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling.background import BackgroundSettings
from shipyard.serving_runtime.scheduling.instances import Batch, InstanceWorker
from shipyard.serving_runtime.scheduling.queue import Envelope, RequestQueue
from shipyard.serving_runtime.scheduling.slicing import SliceBatch, SlicedRequest, Slicer

log = logging.getLogger(__name__)
_T = TypeVar("_T")
BORROW_DIVISOR = 8  # without slice or fill rows, borrowed pieces are max_batch_size / 8 rows


IDLE_NICE = 19


def lower_this_thread(priority: str) -> str:
    """Lower the calling thread's CPU priority (``PRIORITIES``); what was applied, for the log. Never
    raises: where the OS refuses or lacks the call it falls back to nice 19, then to nothing."""
    if priority == "normal":
        return "normal"
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread (Linux)
            return "idle"
        except OSError as exc:
            log.warning("SCHED_IDLE refused for thread %s (%s); using nice %d", threading.current_thread().name,
                        exc, IDLE_NICE)  # fmt: skip
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IDLE_NICE)  # Linux: this thread only
        return "nice"
    except (OSError, AttributeError) as exc:
        log.warning("cannot lower thread %s (%s); background work runs at normal priority",
                    threading.current_thread().name, exc)  # fmt: skip
        return "normal"


class ComputePriority:
    """The lane thread's priority switch around each compute (``execute``), made on that thread.

    ``probe()`` (once, before the first batch) lowers the thread and raises it again: where the OS allows both
    (Linux ``SCHED_IDLE`` -> the thread's own policy needs ``CAP_SYS_NICE`` or ``RLIMIT_NICE`` >= 20), the thread
    runs at the lane's priority only inside ``execute``, where ONNX Runtime computes with the GIL released, and
    holds the GIL at normal priority everywhere else (``per_call``). Where raising is refused, the thread stays
    lowered for good (the priority inversion of docs/scoring.md is then possible) and a warning says so.
    """

    def __init__(self, priority: str) -> None:
        self.priority = priority
        self.applied = ""  # "idle" | "nice" | "normal", once probed
        self.per_call = False
        self.background = True  # the batch being run is background work (set per batch by ``LaneWorker``)
        self.switch_ns = 0  # time spent in the two switches, summed over batches
        self.switches = 0  # batches switched
        self._policy = 0
        self._nice = 0

    def probe(self) -> str:
        """Find whether the priority can be switched per call; leaves the thread at normal priority if so."""
        if self.priority == "normal":
            self.applied = "normal"
            return self.applied
        if hasattr(os, "sched_getscheduler"):
            self._policy = os.sched_getscheduler(0)
            self._nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.applied = lower_this_thread(self.priority)
        if self.applied == "normal":
            return self.applied
        try:
            self._raise()
        except (OSError, AttributeError) as exc:
            log.warning("thread %s cannot raise its priority again (%s: needs CAP_SYS_NICE or RLIMIT_NICE >= 20); "
                        "it stays at %s priority, holding the GIL there too", threading.current_thread().name,
                        exc, self.applied)  # fmt: skip
            return self.applied
        self.per_call = True
        return self.applied

    def _lower(self) -> None:
        if self.applied == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IDLE_NICE)

    def _raise(self) -> None:
        if self.applied == "idle":
            os.sched_setscheduler(0, self._policy, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)

    @property
    def can_run_foreground(self) -> bool:
        """Whether this thread may run real-time work: at normal priority outside ``run``'s lowered calls."""
        return self.per_call or self.applied == "normal"

    def run(self, compute: Callable[[], _T]) -> _T:
        """``compute()`` at the lane's priority (per call, for background batches: ``background``), or as the
        thread is."""
        if not self.per_call or not self.background:
            return compute()
        start = time.perf_counter_ns()
        self._lower()
        lowered = time.perf_counter_ns()
        try:
            return compute()
        finally:
            back = time.perf_counter_ns()
            try:
                self._raise()
            except OSError as exc:  # refused now though the probe passed: stay lowered from here on
                self.per_call = False
                log.warning("thread %s could not raise its priority again (%s); it stays lowered",
                            threading.current_thread().name, exc)  # fmt: skip
            self.switch_ns += lowered - start + time.perf_counter_ns() - back
            self.switches += 1


class _LoweredCompute:
    """A lane instance: ``execute`` runs under the worker's ``ComputePriority``; the rest is the instance's."""

    def __init__(self, inner: BackendInstance, priority: ComputePriority) -> None:
        self._inner = inner
        self._priority = priority

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self._priority.run(lambda: self._inner.execute(inputs, outputs))

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:  # start_requests, execute_requests, inline_safe, ...
        return getattr(self._inner, name)


class LaneWorker(InstanceWorker):
    """An instance worker whose compute runs at the lane's priority (``ComputePriority``)."""

    def __init__(self, instance: BackendInstance, name: str, priority: str) -> None:
        self.compute_priority = ComputePriority(priority)
        super().__init__(_LoweredCompute(instance, self.compute_priority), name)

    @property
    def applied(self) -> str:
        """What ``lower_this_thread`` applied, once the thread runs."""
        return self.compute_priority.applied

    def _run(self) -> None:
        self.compute_priority.probe()
        super()._run()

    def run_batch(self, batch: Batch) -> None:
        """Background work (a ``SliceBatch``: the lane's own) computes lowered while real-time work is recent
        (``SliceBatch.lowered``); a real-time batch lent to this instance (``IdleLane.lend``) at normal
        priority."""
        self.compute_priority.background = isinstance(batch, SliceBatch) and batch.lowered
        super().run_batch(batch)


class IdleLane:
    """The lane's workers and which of them are idle; when the real-time instances may borrow background work."""

    def __init__(self, workers: list[LaneWorker], settings: BackgroundSettings, borrow_rows: int) -> None:
        self.workers = workers
        self.settings = settings
        self.borrow_rows = borrow_rows  # rows per piece of background work a real-time instance borrows
        self.last_realtime_ns = 0  # when a batch led by a real-time request was last dispatched
        self._idle = list(reversed(workers))

    def owns(self, worker: InstanceWorker) -> bool:
        return isinstance(worker, LaneWorker) and worker in self.workers

    def release(self, worker: InstanceWorker) -> None:
        """``worker`` finished its batch."""
        assert isinstance(worker, LaneWorker)
        self._idle.append(worker)

    def keeps_foreground_free(self, queue: RequestQueue) -> bool:
        """Whether the other (real-time) instances take no work now but what they borrow: what is queued first
        is for the lane."""
        first = next(iter(queue), None)
        return first is None or (first.level >= self.settings.level and _lane_can_run(first))

    def can_lend(self) -> bool:
        """Whether a lane instance is idle and may take a real-time batch (its thread computes real-time work at
        normal priority: ``ComputePriority.can_run_foreground``); never with ``background_lend: 0``. The batcher
        dispatches background work to the lane first, so an idle lane instance has none it could run."""
        return self.settings.lend and any(worker.compute_priority.can_run_foreground for worker in self._idle)

    def lend(self) -> LaneWorker:
        """An idle lane worker for a real-time batch (``can_lend`` was True); back through ``release``."""
        worker = next(w for w in reversed(self._idle) if w.compute_priority.can_run_foreground)
        self._idle.remove(worker)
        return worker

    def quiet_from(self, last_foreground_ns: int) -> int:
        """When real-time work is no longer recent (``background_recent_us`` after the last real-time batch was
        dispatched or finished, ``last_foreground_ns``): from then on the real-time instances borrow."""
        return max(last_foreground_ns, self.last_realtime_ns) + self.settings.recent_ns

    def borrow(self, queue: RequestQueue, slicer: Slicer, now_ns: int) -> SliceBatch | None:
        """A piece of background work for an idle real-time instance while real-time work is not recent: the
        next ``borrow_rows`` rows (the slice sizer's with ``background_slice_us``) of the request being run in
        parts, else of the first queued one the lane could run; None when there is none. A real-time request
        that arrives meanwhile waits for one such piece at most."""
        state = self._running(queue, slicer, now_ns)
        if state is None:
            return None
        rows = slicer.sizer.rows if self.settings.slice_ns else self.borrow_rows
        return state.next_slice(rows)

    def dispatch(self, queue: RequestQueue, slicer: Slicer, now_ns: int, last_foreground_ns: int) -> None:
        """Give each idle lane worker a background request: the rest of the one being run in parts (a rider
        of real-time batches, or borrowed), else the first queued one that can run in parts. It computes at
        the lane's idle priority while real-time work is recent, else at normal priority (nothing real-time to
        protect then, and a job alone is not starved by other processes)."""
        lowered = now_ns < self.quiet_from(last_foreground_ns)
        while self._idle:
            state = self._running(queue, slicer, now_ns)
            if state is None:
                return
            batch = state.next_slice(state.remaining)
            batch.lowered = lowered
            self._idle.pop().hand_off(batch)

    def _running(self, queue: RequestQueue, slicer: Slicer, now_ns: int) -> SlicedRequest | None:
        """The background request being run in parts, else the first queued one the lane can run (now run in
        parts), else None."""
        state = slicer.head()
        if state is None:
            envelope = _first_background(queue, self.settings.level)
            if envelope is None:
                return None
            state = slicer.adopt_envelope(queue, envelope, now_ns)
        return state


def _first_background(queue: RequestQueue, level: int) -> Envelope | None:
    """The first queued background request the lane can run (not decoupled, not a fast-path group, not
    delayed), else None; real-time requests queued before it are left to the other instances."""
    for envelope in queue.at_level(level):
        return envelope if _lane_can_run(envelope) else None
    return None


def _lane_can_run(envelope: Envelope) -> bool:
    request = envelope.request
    return request.on_response is None and request.group_arrivals_ns is None and not envelope.delayed


def lane_for(
    instances: Sequence[BackendInstance],
    settings: BackgroundSettings | None,
    model_name: str,
    version: int,
    where: str,
    max_batch_size: int = 0,
) -> tuple[Sequence[BackendInstance], IdleLane | None]:
    """The instances for real-time work and the idle lane (None without ``background_instances``).

    Raises: ModelConfigError when the lane would take every instance.
    """
    count = settings.instances if settings is not None else 0
    if not count or settings is None:
        return instances, None
    if count >= len(instances):
        raise ModelConfigError(
            f"{where}: parameters 'background_instances' is {count} but the instance_group has {len(instances)} "
            "instance(s); real-time work needs at least one: raise instance_group count or lower it"
        )
    keep = len(instances) - count
    workers = [
        LaneWorker(instance, f"{model_name}-v{version}-bg{i}", settings.thread_priority)
        for i, instance in enumerate(instances[keep:])
    ]
    borrow = settings.slice_rows or settings.fill_rows or max_batch_size // BORROW_DIVISOR
    return instances[:keep], IdleLane(workers, settings, max(1, min(borrow, max_batch_size)))
