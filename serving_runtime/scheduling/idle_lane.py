"""The idle lane: background work runs on instances of its own, at the OS's idle CPU priority.

Priority orders the queue, slices (``slicing.py``) bound how long a real-time request waits behind a
background batch and co-batching (``cobatch.py``) lets background rows ride in real-time batches, but
all of them share one instance: every row the job computes there is time a real-time request may wait,
so on a busy CPU the job's share and the real-time p99 trade against each other. With
``background_instances: N`` (``background.py``) the last N instances of the model's ``instance_group``
form the *idle lane*:

- they run only background requests (the lowest priority level), each whole (``max_batch_size`` rows
  at most, as the job sent it): never a real-time one, so nothing real-time ever waits for them;
- their worker threads run at the OS's idle priority (``background_thread_priority``: ``idle``, the
  default, is Linux ``SCHED_IDLE``; ``nice`` is nice 19; ``normal`` leaves it, for measuring), so the
  kernel gives their compute only the CPU time that nothing else wants: a real-time batch's compute, the
  event loop and the clients preempt it at once, instead of queueing behind it;
- the other instances are **reserved** for real-time work: they take no background-only work (no slices,
  no whole background batches), whether real-time work is recent or not, so a real-time request never
  waits behind a background batch, not even the first one after a quiet spell. Background rows still ride
  in their real-time batches with ``background_fill_rows`` (co-batching) and whole small background
  requests join them up to ``background_share_rows``. A job alone runs on the lane only (at idle priority,
  but then nothing else wants the CPU); a lane of more instances runs more of its requests at once.
  Requests the lane cannot take (decoupled, fast-path groups, delayed by a queue policy) go to the
  real-time instances as before.

With ONNX Runtime at ``intra_op_thread_count: 1`` a run computes on the calling thread, so lowering the
worker thread lowers the compute; the pool threads of a bigger ``intra_op_thread_count`` were started
when the session was created and keep normal priority (docs/scoring.md). A lowered thread also runs its
little Python (the outputs' hand-back) at idle priority while holding the GIL; measured, not avoided
(an unprivileged thread cannot raise its priority again to do that part at normal priority).

Measured (docs/scoring.md, "The idle lane"): where other processes took the CPU it kept the real-time p50
at ~1x (at normal priority the same lane doubled it), but with the CPU otherwise idle it raised the
real-time p99 several-fold against co-batching alone: opt-in, not recommended on a CPU node as built.

Public: ``IdleLane``, ``lane_for``, ``lower_this_thread``. Runs on the event loop thread, except
``lower_this_thread`` (on the lane's worker threads).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling.background import BackgroundSettings
from shipyard.serving_runtime.scheduling.instances import InstanceWorker
from shipyard.serving_runtime.scheduling.queue import Envelope, RequestQueue
from shipyard.serving_runtime.scheduling.slicing import Slicer

log = logging.getLogger(__name__)


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


class LaneWorker(InstanceWorker):
    """An instance worker whose thread lowers itself before its first batch."""

    def __init__(self, instance: BackendInstance, name: str, priority: str) -> None:
        super().__init__(instance, name)
        self.priority = priority
        self.applied = ""  # what ``lower_this_thread`` applied, once the thread runs

    def _run(self) -> None:
        self.applied = lower_this_thread(self.priority)
        super()._run()


class IdleLane:
    """The lane's workers and which of them are idle."""

    def __init__(self, workers: list[LaneWorker], settings: BackgroundSettings) -> None:
        self.workers = workers
        self.settings = settings
        self._idle = list(reversed(workers))

    def owns(self, worker: InstanceWorker) -> bool:
        return isinstance(worker, LaneWorker) and worker in self.workers

    def release(self, worker: InstanceWorker) -> None:
        """``worker`` finished its batch."""
        assert isinstance(worker, LaneWorker)
        self._idle.append(worker)

    def keeps_foreground_free(self, queue: RequestQueue) -> bool:
        """Whether the other (real-time) instances take no work now: what is queued first is for the lane."""
        first = next(iter(queue), None)
        return first is None or (first.level >= self.settings.level and _lane_can_run(first))

    def dispatch(self, queue: RequestQueue, slicer: Slicer, now_ns: int) -> None:
        """Give each idle lane worker a background request: the rest of the one being run in parts (a rider
        of real-time batches), else the first queued one that can run in parts."""
        while self._idle:
            state = slicer.head()
            if state is None:
                envelope = _first_background(queue, self.settings.level)
                if envelope is None:
                    return
                state = slicer.adopt_envelope(queue, envelope, now_ns)
            self._idle.pop().hand_off(state.next_slice(state.remaining))


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
    instances: Sequence[BackendInstance], settings: BackgroundSettings | None, model_name: str, version: int, where: str
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
    return instances[:keep], IdleLane(workers, settings)
